"""Container images without a daemon: references parsed (reference.py), pulled by digest with
skopeo into one OCI layout (skopeo.py, layout.py, store.py), unpacked once per digest with
umoci (zstd layers made plain first: zstd.py), and turned into what a container runs
(config.py, users.py; GPUs: gpus.py). `image_container` gives the parts of a ContainerSpec
that come from an image; the caller adds its binds, limits and state folder.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from openmaker.runtime.images.config import ImageConfig, command, stop_signal
from openmaker.runtime.images.ecr import EcrTokens
from openmaker.runtime.images.process import Cancelled, never
from openmaker.runtime.images.reference import ImageReference, ReferenceError, parse_reference
from openmaker.runtime.images.skopeo import OnProgress, PullError, PullStopped, RegistryAccess
from openmaker.runtime.images.store import Image, ImageStore
from openmaker.runtime.images.users import UserError, resolve_user
from openmaker.runtime.spec import User
from openmaker.settings import EcrEndpoint

__all__ = [
    "Cancelled", "Image", "ImageConfig", "ImageContainer", "ImageReference", "ImageStore",
    "OnProgress", "PullError", "PullStopped", "ReferenceError", "RegistryAccess",
    "RegistrySettings", "UserError", "image_container", "image_store", "never", "parse_reference",
]  # fmt: skip


@dataclass(frozen=True)
class ImageContainer:
    """The parts of a ContainerSpec an image gives: layers=(rootfs,), argv, env, workdir, user."""

    rootfs: str
    argv: list[str]
    env: dict[str, str]
    workdir: str
    user: User
    # The signal a stop sends first (the image's StopSignal; SIGTERM by default).
    stop_signal: int = signal.SIGTERM


class RegistrySettings(Protocol):
    """What the image store takes from openmaker's settings (Settings, a host's settings)."""

    @property
    def home(self) -> Path: ...
    @property
    def registry_auth_file(self) -> Path | None: ...
    @property
    def insecure_registries(self) -> tuple[str, ...]: ...
    @property
    def registries_conf(self) -> Path | None: ...
    @property
    def ecr(self) -> EcrEndpoint: ...


def image_store(settings: RegistrySettings) -> ImageStore:
    folder = settings.home / "images"
    tokens = EcrTokens(settings.ecr, folder / "ecr")
    access = RegistryAccess(
        settings.registry_auth_file, settings.insecure_registries, settings.registries_conf, tokens
    )
    return ImageStore(folder, access)


def image_container(
    image: Image,
    mode: str | None,
    env: dict[str, str],
    entrypoint: list[str] | None = None,
    arguments: list[str] | None = None,
) -> ImageContainer:
    """How `image` runs in `mode` ("train", "serve"; None: its own CMD) with the caller's `env`
    and overrides."""
    run = command(image.config, mode, env, entrypoint, arguments)
    resolved = resolve_user(image.rootfs, image.config.user)
    environment = {"HOME": resolved.home, **run.env}
    if not run.argv:
        raise UserError("the image has no ENTRYPOINT and none was given")
    try:
        signum = stop_signal(image.config.stop_signal)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return ImageContainer(
        str(image.rootfs), run.argv, environment, run.workdir, resolved.user, signum
    )
