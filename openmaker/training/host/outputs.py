"""Packing `/opt/ml/model` and `/opt/ml/output/data` and writing them back (CONTRACT.md §3).

Archives are built in the job's folder first and uploaded in one atomic put, so no partial
object is ever visible under the final key. In a multi-host job the folders of all hosts are
merged into one archive. The folders are the code's: they are read through jobtree.py,
never through a link it left (a link inside is stored as a link, as `tar` stores it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from openmaker.store import Location, resolve, upload_file
from openmaker.store.transfer import OnBytes
from openmaker.training.host import jobtree
from openmaker.training.host.checkpoints.snapshot import upload_open
from openmaker.training.host.events import Emit
from openmaker.training.host.layout import CONTAINER_ROOT
from openmaker.training.host.progress import ProgressMeter
from openmaker.training.host.spec import HostSpec

MODEL, OUTPUT_DATA = "model", "output/data"
# Files uploaded at once when the model is not compressed (each holds a descriptor).
UPLOADS_IN_FLIGHT = 16


@dataclass(frozen=True)
class Artifacts:
    model_uri: str
    output_uri: str


def pack(folders: Sequence[Path], archive: Path) -> None:
    """A gzip tar of folders of the user's own (the client's source folder)."""
    handles = [os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) for folder in folders]
    try:
        pack_folders(handles, archive)
    finally:
        for fd in handles:
            os.close(fd)


def pack_folders(folders: Sequence[int], archive: Path) -> None:
    """A gzip tar of the folders' contents (by handle), member names relative to each folder.
    Folders, regular files and links (as links) go in; FIFOs, devices and sockets do not."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "w:gz", compresslevel=6) as tar:
            for folder in folders:
                for entry in jobtree.walk(folder):
                    _add(tar, entry)
    except BaseException:
        # A half archive (a full disk, a stop) must never be taken for a whole one.
        archive.unlink(missing_ok=True)
        raise


def _add(tar: tarfile.TarFile, entry: jobtree.Entry) -> None:
    info = tarfile.TarInfo(entry.path)
    status = entry.status
    info.mode, info.uid, info.gid = stat.S_IMODE(status.st_mode), status.st_uid, status.st_gid
    info.mtime = int(status.st_mtime)
    if stat.S_ISDIR(status.st_mode):
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    elif stat.S_ISLNK(status.st_mode):
        info.type = tarfile.SYMTYPE
        with contextlib.suppress(OSError):  # gone since it was listed
            info.linkname = os.readlink(entry.name, dir_fd=entry.parent)
            tar.addfile(info)
    elif stat.S_ISREG(status.st_mode):
        fd = jobtree.open_file(entry.parent, entry.name)
        if fd is None:
            return  # swapped for something else since it was listed
        with os.fdopen(fd, "rb") as stream:
            info.size = os.fstat(fd).st_size
            tar.addfile(info, stream)


# One host's part of the job's outputs: its spec and the handles on its tree.
HostPart = tuple[HostSpec, jobtree.HostTree]


def upload_artifacts(hosts: Sequence[HostPart], staging: Path, emit: Emit) -> Artifacts:
    first = hosts[0][0]
    output = first.plan.output
    destination = resolve(output.prefix, first.store)
    compressed = output.compressed
    with _opened(hosts, MODEL, emit) as models, _opened(hosts, OUTPUT_DATA, emit) as outputs:
        uploads: list[tuple[Path, Location]] = []
        if compressed:
            pack_folders(models, staging / "model.tar.gz")
            uploads.append((staging / "model.tar.gz", destination.child("model.tar.gz")))
        pack_folders(outputs, staging / "output.tar.gz")
        uploads.append((staging / "output.tar.gz", destination.child("output.tar.gz")))
        files = [] if compressed else _model_files(models, destination.child("model"))
        total = sum(p.stat().st_size for p, _ in uploads) + sum(s for _, _, s, _ in files)
        meter = ProgressMeter("Uploading", total, emit)
        asyncio.run(_upload_all(uploads, files, meter.add))
    meter.finish()
    return Artifacts(output.model_uri, output.uri("output.tar.gz"))


@contextlib.contextmanager
def _opened(hosts: Sequence[HostPart], relative: str, emit: Emit) -> Iterator[list[int]]:
    """The folder of each host, by handle; one the code replaced by a link (or a file) is
    taken as empty, and the job's log says so."""
    handles: list[int] = []
    try:
        for spec, tree in hosts:
            try:
                handles.append(tree.open(relative))
            except FileNotFoundError:
                continue
            except jobtree.NotAFolder as exc:
                consequence = "nothing in it is uploaded"
                jobtree.say_ignored(spec, emit, CONTAINER_ROOT, relative, exc, consequence)
        yield handles
    finally:
        for fd in handles:
            os.close(fd)


# (folder handle, relative path, size, target) of a file of an uncompressed model.
ModelFile = tuple[int, str, int, Location]


def _model_files(folders: Sequence[int], target: Location) -> list[ModelFile]:
    return [
        (folder, name, status.st_size, target.child(name))
        for folder in folders
        for name, status in jobtree.regular_files(folder).items()
    ]


async def _upload_all(
    uploads: list[tuple[Path, Location]], files: list[ModelFile], on_bytes: OnBytes
) -> None:
    gate = asyncio.Semaphore(UPLOADS_IN_FLIGHT)

    async def one_file(folder: int, name: str, target: Location) -> None:
        async with gate:
            fd = jobtree.open_file(folder, name)
            if fd is not None:  # not swapped for a link meanwhile (the code has ended)
                await upload_open(fd, target, on_bytes)

    await asyncio.gather(
        *(upload_file(path, target, on_bytes) for path, target in uploads),
        *(one_file(folder, name, target) for folder, name, _, target in files),
    )
