"""What a `TrainingImage` names, and the command a host starts for it.

Two kinds run today: a local folder holding an executable `train` ("bring your own container":
the folder is shown at /opt/program, the host's root filesystem is the operating system), and
the built-in script-mode image, which runs the `sagemaker-training` toolkit with openmaker's own
Python. Registry images are refused until they can be pulled.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

SCRIPT_MODE_IMAGE = "openmaker://script-mode"
PROGRAM_MOUNT = "/opt/program"
DEFAULT_COMMAND = "train"


class ImageError(ValueError):
    """The image cannot be run here; the message says why, for a person."""


@dataclass(frozen=True)
class Image:
    reference: str
    # A bring-your-own folder, shown at /opt/program; None for the script-mode image.
    program_dir: Path | None

    @property
    def path_entries(self) -> list[str]:
        """Folders put first on the code's PATH, as seen inside the sandbox."""
        if self.program_dir is not None:
            return [PROGRAM_MOUNT]
        # The toolkit's `train` command lives beside openmaker's Python.
        return [str(Path(sys.executable).parent)]

    @property
    def description(self) -> str:
        if self.program_dir is not None:
            return f"local image {self.program_dir}"
        return f"script mode with the sagemaker-training toolkit on Python {sys.version.split()[0]}"

    def command(self, algorithm: dict[str, Any]) -> list[str]:
        """`ContainerEntrypoint` + `ContainerArguments` when given, else `train`, as SageMaker."""
        entrypoint = list(algorithm.get("ContainerEntrypoint") or [])
        arguments = list(algorithm.get("ContainerArguments") or [])
        return (entrypoint or [DEFAULT_COMMAND]) + arguments


def resolve_image(reference: str, algorithm: dict[str, Any] | None = None) -> Image:
    if reference == SCRIPT_MODE_IMAGE:
        return Image(reference, None)
    parsed = urlparse(reference)
    if parsed.scheme == "file" or reference.startswith("/"):
        folder = Path(unquote(parsed.path) if parsed.scheme == "file" else reference)
        return _local_folder(reference, folder, algorithm or {})
    raise ImageError(
        f"image {reference!r} is a registry image, which openmaker cannot run yet: use a local "
        f"folder holding an executable 'train' (an absolute path or file:// URI), or "
        f"{SCRIPT_MODE_IMAGE!r} for script mode"
    )


def _local_folder(reference: str, folder: Path, algorithm: dict[str, Any]) -> Image:
    if not folder.is_dir():
        raise ImageError(f"image folder {folder} does not exist")
    if not algorithm.get("ContainerEntrypoint"):
        program = folder / DEFAULT_COMMAND
        if not (program.is_file() and os.access(program, os.X_OK)):
            raise ImageError(
                f"image folder {folder} has no executable '{DEFAULT_COMMAND}' program "
                "(or give AlgorithmSpecification.ContainerEntrypoint)"
            )
    return Image(reference, folder.resolve())
