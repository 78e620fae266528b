"""What a model's `Image` names, for an instance to start with `serve`.

A local folder holding an executable `serve` (an absolute path or a file:// URI, as for
training's bring-your-own folders): the folder is shown at /opt/program, first on PATH, and the
instance's root filesystem is the machine's, copy-on-write. Any other reference — a registry
image, an `oci-archive:` / `docker-archive:` file, an OCI layout folder — is pulled when the
instance starts (openmaker/runtime/images/) and run as its own root, its ENTRYPOINT with `serve`.
SageMaker's framework inference images (scikit-learn, PyTorch, XGBoost, Hugging Face; AWS's
registries need AWS's credentials) are not pulled: this machine stands in for them
(serving/framework/), as training does for their training images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from openmaker.runtime.images import (
    Cancelled,
    ImageContainer,
    ImageReference,
    PullError,
    ReferenceError,
    RegistrySettings,
    UserError,
    image_container,
    image_store,
    parse_reference,
)
from openmaker.serving.framework.standin import STOOD_IN
from openmaker.shapes.framework_images import framework_of
from openmaker.shapes.locations import LocalPaths, image_path

PROGRAM_MOUNT = "/opt/program"
SERVE = "serve"


class ImageError(ValueError):
    """The image cannot be served here; the message says why, for a person."""


@dataclass(frozen=True)
class ServingImage:
    reference: str
    # A local folder with `serve`, shown at /opt/program; None for a pulled image.
    program_dir: Path | None
    # An image to pull and run as its own root filesystem.
    pulled: ImageReference | None = None
    # A SageMaker framework serving image this machine stands in for.
    framework: str | None = None


def resolve(reference: str, local: LocalPaths) -> ServingImage:
    path = image_path(reference)
    if path is not None and (refusal := local.refusal(path)):
        raise ImageError(refusal)
    parsed = urlparse(reference)
    folder = Path(unquote(parsed.path) if parsed.scheme == "file" else reference)
    is_folder = parsed.scheme == "file" or reference.startswith("/")
    # A framework's training image serves as well (`openmaker endpoints deploy --job`).
    framework = framework_of(reference, "inference") or framework_of(reference, "training")
    if framework is not None:
        if framework not in STOOD_IN:
            raise ImageError(
                f"image {reference!r} is SageMaker's {framework} serving image, which openmaker "
                f"does not stand in for (it does for {', '.join(STOOD_IN)})"
            )
        return ServingImage(reference, None, framework=framework)
    if not is_folder or (folder / "oci-layout").is_file():
        try:
            text = str(folder) if is_folder else reference
            return ServingImage(reference, None, parse_reference(text))
        except ReferenceError as exc:
            raise ImageError(str(exc)) from None
    if not folder.is_dir():
        raise ImageError(f"image folder {folder} does not exist")
    program = folder / SERVE
    if not (program.is_file() and os.access(program, os.X_OK)):
        raise ImageError(f"image folder {folder} has no executable '{SERVE}' program")
    return ServingImage(reference, folder.resolve())


def pull(
    image: ServingImage, settings: RegistrySettings, cancelled: Cancelled
) -> ImageContainer | None:
    """A pulled image's root and what it runs (its ENTRYPOINT with `serve`), pulled into the
    machine's image store if missing; None for a local folder. ImageError says why not (or
    that `cancelled()` interrupted the pull)."""
    if image.pulled is None:
        return None
    try:
        pulled = image_store(settings).prepare(image.pulled, lambda line: None, True, cancelled)
        return image_container(pulled, SERVE, {})
    except (PullError, UserError) as exc:
        raise ImageError(str(exc)) from None
    except RuntimeError as exc:  # a layer umoci cannot take as it is
        raise ImageError(f"Cannot unpack image {image.pulled}: {exc}") from None
