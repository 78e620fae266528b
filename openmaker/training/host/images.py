"""What a `TrainingImage` names, and the command a host starts for it.

Three kinds run today: a local folder holding an executable `train` ("bring your own
container": the folder is shown at /opt/program, the host's root filesystem is the operating
system); the built-in script-mode image, which runs the `sagemaker-training` toolkit with
openmaker's own Python; and SageMaker's framework images (scikit-learn, PyTorch, TensorFlow,
XGBoost, Hugging Face, MXNet), which are pulled and run as they are when they (or a mirror of
them) can be pulled, and otherwise stood in for by this machine: script mode when the request
names an entry point in its hyperparameters (SDK v2), or the request's `ContainerEntrypoint` run
on this machine's root filesystem (SDK v3's ModelTrainer). Any other reference — a registry
image, an `oci-archive:` / `docker-archive:` file, an OCI layout folder — is an image pulled
on the host (openmaker/runtime/images/) and run as its own root filesystem, as Docker would.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from openmaker.runtime.images import (
    Cancelled,
    ImageContainer,
    ImageReference,
    OnProgress,
    PullError,
    PullStopped,
    ReferenceError,
    RegistrySettings,
    UserError,
    image_container,
    image_store,
    parse_reference,
)
from openmaker.shapes.framework_images import framework_of

SCRIPT_MODE_IMAGE = "openmaker://script-mode"
PROGRAM_MOUNT = "/opt/program"
# The verb a training container is started with.
TRAIN = "train"


class ImageError(ValueError):
    """The image cannot be run here; the message says why, for a person."""


# The Python distribution behind each framework, to say which version stands in for the image.
_DISTRIBUTIONS = {
    "scikit-learn": "scikit-learn",
    "PyTorch": "torch",
    "TensorFlow": "tensorflow",
    "XGBoost": "xgboost",
    "Hugging Face": "transformers",
    "MXNet": "mxnet",
}


@dataclass(frozen=True)
class Image:
    reference: str
    # A bring-your-own folder, shown at /opt/program; None for script mode.
    program_dir: Path | None
    # The framework of a SageMaker framework image that this machine stands in for.
    framework: str | None = None
    # A framework image started by its request's ContainerEntrypoint, not by script mode.
    entrypoint: bool = False
    # An image pulled (registry, image file, OCI layout) and run as its own root filesystem.
    pulled: ImageReference | None = None
    # Once pulled on the host (pull_image): its root filesystem and what it runs, as Docker would.
    container: ImageContainer | None = None
    # The pulled image's manifest digest.
    digest: str | None = None
    # Why a framework image is stood in for by this machine rather than run as it is.
    stand_in_reason: str | None = None

    @property
    def path_entries(self) -> list[str]:
        """Folders put first on the code's PATH, as seen inside the sandbox."""
        if self.program_dir is not None:
            return [PROGRAM_MOUNT]
        if self.pulled is not None:
            return []  # the image's own PATH
        # The toolkit's `train` command lives beside openmaker's Python.
        return [str(Path(sys.executable).parent)]

    @property
    def description(self) -> str:
        if self.program_dir is not None:
            return f"local image {self.program_dir}"
        if self.pulled is not None:
            digest = f" ({self.digest})" if self.digest else ""
            if self.framework is not None:
                return f"SageMaker's {self.framework} image {self.pulled}{digest}, run as it is"
            return f"image {self.pulled}{digest}"
        python = sys.version.split()[0]
        toolkit = f"script mode with the sagemaker-training toolkit on Python {python}"
        if self.framework is None:
            return toolkit
        if self.entrypoint:
            toolkit = f"its ContainerEntrypoint on this machine with Python {python}"
        why = f"; it could not be pulled: {self.stand_in_reason}" if self.stand_in_reason else ""
        return (
            f"{self.framework} image {self.reference} stood in for by {toolkit} "
            f"({_local_version(self.framework)}{why})"
        )

    def command(
        self, verb: str, entrypoint: Sequence[str] = (), arguments: Sequence[str] = ()
    ) -> list[str]:
        """The entrypoint and its arguments when given, else `verb` (`train`, `serve`) and
        them, as SageMaker starts an image. A pulled image's was settled by its pull."""
        if self.container is not None:
            return list(self.container.argv)
        return (list(entrypoint) or [verb]) + list(arguments)


def resolve_image(
    reference: str,
    entrypoint: bool = False,
    hyperparameters: Mapping[str, str] | None = None,
) -> Image:
    """What `reference` names, on this machine. `entrypoint`: the request starts the image
    with its own ContainerEntrypoint."""
    if reference == SCRIPT_MODE_IMAGE:
        return Image(reference, None)
    parsed = urlparse(reference)
    if parsed.scheme == "file" or reference.startswith("/"):
        folder = Path(unquote(parsed.path) if parsed.scheme == "file" else reference)
        if (folder / "oci-layout").is_file():
            return Image(reference, None, pulled=parse_reference(f"oci:{folder}"))
        return _local_folder(reference, folder, entrypoint)
    framework = framework_of(reference)
    if framework is not None:
        if entrypoint:
            return Image(reference, None, framework, entrypoint=True)
        if "sagemaker_program" not in (hyperparameters or {}):
            raise ImageError(
                f"image {reference!r} is SageMaker's {framework} image, which openmaker runs "
                "with an entry point only: give the sagemaker_program and "
                "sagemaker_submit_directory hyperparameters (as the sagemaker SDK v2 sets them) "
                "or AlgorithmSpecification.ContainerEntrypoint (as SDK v3's ModelTrainer does)"
            )
        return Image(reference, None, framework)
    try:
        return Image(reference, None, pulled=parse_reference(reference))
    except ReferenceError as exc:
        raise ImageError(
            f"{exc}: give a registry image ([registry/]repository[:tag][@digest]), "
            "oci-archive:PATH, docker-archive:PATH, an OCI layout or a folder holding an "
            f"executable '{TRAIN}' (an absolute path or file:// URI), or {SCRIPT_MODE_IMAGE!r}"
        ) from None


def framework_to_pull(image: Image, framework_images: str) -> Image | None:
    """A framework image to try pulling and running as it is (`framework_images` "pull"), the
    stand-in `image` being what runs when it cannot be pulled; None: nothing to try."""
    if image.framework is None or image.pulled is not None or framework_images != "pull":
        return None
    try:
        return dataclasses.replace(image, pulled=parse_reference(image.reference))
    except ReferenceError:
        return None


def stood_in(image: Image, reason: str) -> Image:
    """The framework image `image` stood in for by this machine, since `reason`."""
    # The why of a pull's failure ("Cannot pull REF: WHY. The registry said: …") is enough.
    why = reason.partition(f"Cannot pull {image.reference}: ")[2] or reason
    why = why.partition(". The registry said: ")[0]
    return dataclasses.replace(image, pulled=None, stand_in_reason=why[:300])


def pull_image(
    image: Image,
    settings: RegistrySettings,
    entrypoint: Sequence[str],
    arguments: Sequence[str],
    on_progress: OnProgress,
    cancelled: Cancelled,
    verb: str | None = TRAIN,
) -> Image:
    """`image` pulled into the machine's image store (and unpacked) if it is one to pull, with
    what its container runs: its ENTRYPOINT with `verb` (None: its CMD), or the request's
    overrides. ImageError
    says why it cannot be had, naming the image and what the registry said; PullStopped once
    `cancelled()` (the job stopped) interrupted it."""
    if image.pulled is None:
        return image
    try:
        pulled = image_store(settings).prepare(image.pulled, on_progress, cancelled=cancelled)
        run = image_container(pulled, verb, {}, list(entrypoint) or None, list(arguments) or None)
    except PullStopped:
        raise
    except PullError as exc:
        raise ImageError(str(exc)) from None
    except RuntimeError as exc:  # a layer umoci cannot take as it is (zstd.py)
        raise ImageError(f"Cannot unpack image {image.pulled}: {exc}") from None
    except UserError as exc:
        raise ImageError(f"image {image.pulled} cannot run: {exc}") from None
    return dataclasses.replace(image, container=run, digest=pulled.digest)


def _local_version(framework: str) -> str:
    distribution = _DISTRIBUTIONS[framework]
    try:
        return f"{distribution} {importlib.metadata.version(distribution)} installed here"
    except importlib.metadata.PackageNotFoundError:
        return f"{distribution} is not installed here"


def _local_folder(reference: str, folder: Path, entrypoint: bool) -> Image:
    if not folder.is_dir():
        raise ImageError(f"image folder {folder} does not exist")
    if not entrypoint:
        program = folder / TRAIN
        if not (program.is_file() and os.access(program, os.X_OK)):
            raise ImageError(
                f"image folder {folder} has no executable '{TRAIN}' program "
                "(or give AlgorithmSpecification.ContainerEntrypoint)"
            )
    return Image(reference, folder.resolve())
