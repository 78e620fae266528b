"""What a model's `Image` names, for an instance to start with `serve`.

A local folder holding an executable `serve` runs today (an absolute path or a file:// URI, as
for training's bring-your-own folders): the folder is shown at /opt/program, first on PATH, and
the instance's root filesystem is the machine's, copy-on-write. Registry images come with image
pulls (issue 13).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from openmaker.shapes.locations import LocalPaths

PROGRAM_MOUNT = "/opt/program"
SERVE = "serve"


class ImageError(ValueError):
    """The image cannot be served here; the message says why, for a person."""


@dataclass(frozen=True)
class ServingImage:
    reference: str
    program_dir: Path


def resolve(reference: str, local: LocalPaths) -> ServingImage:
    parsed = urlparse(reference)
    if parsed.scheme != "file" and not reference.startswith("/"):
        raise ImageError(
            f"image {reference!r} is a registry image, which openmaker cannot serve yet: use a "
            f"local folder holding an executable '{SERVE}' (an absolute path or file:// URI)"
        )
    folder = Path(unquote(parsed.path) if parsed.scheme == "file" else reference)
    if refusal := local.refusal(folder):
        raise ImageError(refusal)
    if not folder.is_dir():
        raise ImageError(f"image folder {folder} does not exist")
    program = folder / SERVE
    if not (program.is_file() and os.access(program, os.X_OK)):
        raise ImageError(f"image folder {folder} has no executable '{SERVE}' program")
    return ServingImage(reference, folder.resolve())
