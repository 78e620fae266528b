"""The images of this machine: pulled by digest into one OCI layout (each layer fetched once,
shared by every image that has it) and unpacked once per digest into a root filesystem that
nothing writes (containers see it through an overlay of their own).

`ImageStore(folder, access).prepare(reference, on_progress)` returns an `Image`: its digest,
its unpacked root and its config. A registry reference is resolved to its digest first (one
manifest request), so that a tag moved since is pulled anew and an unchanged one costs
nothing more; files (`oci-archive:`, `docker-archive:`, OCI layouts) are copied once per
version of the file.

A process that prepares an image holds a shared lock on its root (`<digest>.use`) until it
exits, so that `prune` (catalog.py), which needs that lock exclusively, never removes a root
a container may be running on.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from openmaker.runtime.images import process, skopeo
from openmaker.runtime.images.config import ImageConfig
from openmaker.runtime.images.layout import Layout
from openmaker.runtime.images.process import Cancelled, Interrupted
from openmaker.runtime.images.records import Records
from openmaker.runtime.images.reference import ImageReference
from openmaker.runtime.images.skopeo import OnProgress, PullError, PullStopped, RegistryAccess
from openmaker.runtime.images.zstd import has_zstd_layers, plain_twin


@dataclass(frozen=True)
class Image:
    reference: ImageReference
    # The manifest's digest in the layout: what the root filesystem is unpacked by.
    digest: str
    # The unpacked root filesystem (never written: shown through overlays).
    rootfs: Path
    config: ImageConfig


class ImageStore:
    def __init__(self, folder: Path, access: RegistryAccess) -> None:
        self.folder = folder
        self.access = access
        self.layout = Layout(folder / "oci")
        self.unpacked = folder / "rootfs"
        self.records = Records(folder / "records")

    def prepare(
        self,
        reference: ImageReference,
        on_progress: OnProgress,
        use: bool = True,
        cancelled: Cancelled = process.never,
    ) -> Image:
        """The image pulled and unpacked; `use`: for a container of this process (which keeps
        its root from `prune` until the process ends). PullStopped once `cancelled()`: the
        pull or unpack under way is killed and leaves nothing half-written."""
        name = self.pull(reference, on_progress, cancelled)
        with self.layout.locked(exclusive=False):
            digest = self.layout.names().get(name)
            if digest is None:
                raise PullError(f"Cannot pull {reference}: it was removed while being pulled")
            config = ImageConfig.from_json(self.layout.config(name))
            if use:
                _hold(use_lock(self.unpacked, digest))
        self.records.note(name, digest, str(reference), used=use)
        rootfs = self.unpack(name, digest, on_progress, cancelled)
        return Image(reference, digest, rootfs, config)

    def pull(
        self,
        reference: ImageReference,
        on_progress: OnProgress,
        cancelled: Cancelled = process.never,
    ) -> str:
        """Copy the image into the layout unless it is there; its name in the layout."""
        if missing := skopeo.skopeo_missing():
            raise PullError(f"Cannot pull {reference}: {missing}")
        layers: int | None = None
        given = str(reference)
        if reference.is_registry:
            if reference.digest is None:
                on_progress(f"resolving {reference}")
                digest, raw = skopeo.resolve(reference, self.access, cancelled)
                reference = reference.pinned(digest)
                layers = _layer_count(raw)
            name, source = f"r-{reference.digest}".replace(":", "-"), reference.by_digest()
        else:
            name, source = _file_name(reference), reference.skopeo_name()
        if name not in self._names():
            with self.layout.locked(exclusive=True):
                if name not in self.layout.names():  # else another pull brought it meanwhile
                    on_progress(f"pulling {reference}")
                    destination = f"oci:{self.layout.folder}:{name}"
                    with self.layout.restored_if_stopped():
                        skopeo.copy(
                            reference, source, destination, self.access, on_progress, layers,
                            cancelled,
                        )  # fmt: skip
                digest = self.layout.names()[name]
                self.records.note(name, digest, given)
        return name

    def unpack(
        self, name: str, digest: str, on_progress: OnProgress, cancelled: Cancelled = process.never
    ) -> Path:
        """The root filesystem of the image `name` (manifest `digest`), unpacked once."""
        bundle = self.unpacked / digest.replace(":", "-")
        rootfs = bundle / "rootfs"
        if rootfs.is_dir():
            return rootfs
        with _flock(bundle.with_name(bundle.name + ".lock")):
            if rootfs.is_dir():
                return rootfs
            with self.layout.locked(exclusive=True):
                if has_zstd_layers(self.layout.manifest(name)):
                    on_progress("decompressing zstd layers")
                    name = plain_twin(self.layout, name)
            on_progress("unpacking the image")
            temporary = bundle.with_name(f".{bundle.name}.{os.getpid()}")
            shutil.rmtree(temporary, ignore_errors=True)
            rootless = ["--rootless"] if os.geteuid() != 0 else []
            # `raw unpack`: the root filesystem alone, without the mtree manifest `umoci unpack`
            # writes by hashing every file again (only `umoci repack` would need it).
            argv = ["umoci", "--log", "error", "raw", "unpack", *rootless]
            argv += ["--image", f"{self.layout.folder}:{name}", str(temporary / "rootfs")]
            temporary.mkdir(parents=True)
            try:
                with self.layout.locked(exclusive=False):
                    done = process.run(argv, cancelled)
            except Interrupted:
                shutil.rmtree(temporary, ignore_errors=True)
                raise PullStopped(f"The unpacking of image {digest} was stopped") from None
            if done.code != 0:
                shutil.rmtree(temporary, ignore_errors=True)
                said = done.stderr.strip()[-600:]
                raise PullError(f"Cannot unpack image {digest}: {said}")
            os.replace(temporary, bundle)
        return rootfs

    def _names(self) -> dict[str, str]:
        with self.layout.locked(exclusive=False):
            return self.layout.names()


def _layer_count(raw: bytes) -> int | None:
    manifest = json.loads(raw)
    layers = manifest.get("layers")
    return len(layers) if isinstance(layers, list) else None  # a list: its platform's image


def _file_name(reference: ImageReference) -> str:
    """A name for one version of an image file or folder: its path, size and modification."""
    path = Path(reference.path).absolute()
    try:
        status = path.stat()
    except OSError as error:
        raise PullError(f"Cannot read image {reference}: {error.strerror}") from None
    if path.is_dir():
        status = (path / "index.json").stat() if (path / "index.json").exists() else status
    key = f"{reference.transport}:{path}:{reference.name}:{status.st_size}:{status.st_mtime_ns}"
    return "f-" + hashlib.sha256(key.encode()).hexdigest()


def use_lock(unpacked: Path, digest: str) -> Path:
    """The file whose shared lock says the root of `digest` may be in use."""
    return unpacked / (digest.replace(":", "-") + ".use")


# The use locks this process holds (until it exits): path → open file.
_HELD: dict[Path, IO[str]] = {}


def _hold(path: Path) -> None:
    if path in _HELD:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = open(path, "a")  # noqa: SIM115 - held until the process exits
    fcntl.flock(lock, fcntl.LOCK_SH)
    _HELD[path] = lock


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
