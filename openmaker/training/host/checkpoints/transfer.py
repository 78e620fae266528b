"""Checkpoints: `CheckpointConfig.S3Uri` copied into `LocalPath` before the code starts, kept in
sync while it runs (checkpoints/sync.py), and written back once more when it ends.

A ledger, a JSON file in the host's folder out of the code's sight, names every file that the
remote prefix holds from this host, with the signature (size, mtime, inode) of the version
uploaded or restored. The end-of-job save uploads only what differs from it and deletes only
what it names, so it repeats none of the sync's work, and the hosts of a multi-host job (which
share one prefix, as on SageMaker) never delete each other's files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
from pathlib import Path, PurePosixPath

import obstore

from openmaker.store import (
    Download,
    Location,
    StoreError,
    UnsafeKeyError,
    delete_keys,
    download_all,
    list_prefix,
    resolve,
    safe_destination,
)
from openmaker.store.transfer import OnBytes
from openmaker.training.host.checkpoints.snapshot import Signature, signature, upload_open
from openmaker.training.host.events import Emit
from openmaker.training.host.jobtree import (
    HostTree,
    NotAFolder,
    lstat_below,
    open_file,
    regular_files,
    say_ignored,
)
from openmaker.training.host.layout import CONTAINER_ROOT
from openmaker.training.host.plan import CheckpointPlan
from openmaker.training.host.progress import ProgressMeter
from openmaker.training.host.spec import HostSpec

# Uploads in flight at once while syncing; checkpoints are few and often large.
UPLOADS_IN_FLIGHT = 8


def checkpoint_dir(spec: HostSpec) -> Path | None:
    """The host folder behind LocalPath: inside the /opt/ml tree when LocalPath is under it."""
    if spec.plan.checkpoint is None:
        return None
    local = PurePosixPath(spec.plan.checkpoint.local_path)
    if ".." in local.parts:
        # Joined to the host's folder, it would name a folder of the machine.
        raise UnsafeKeyError(f"CheckpointConfig.LocalPath {local} must not contain '..'")
    if local.is_relative_to(CONTAINER_ROOT):
        return spec.ml_dir.joinpath(*local.relative_to(CONTAINER_ROOT).parts)
    return spec.work_dir / "checkpoints"


def checkpoint_plan(spec: HostSpec) -> CheckpointPlan:
    """The job's checkpoints (of a job that has them)."""
    assert spec.plan.checkpoint is not None
    return spec.plan.checkpoint


def checkpoint_remote(spec: HostSpec) -> Location:
    uri = checkpoint_plan(spec).uri
    location = resolve(uri, spec.store)
    # A checkpoint URI names a folder: `s3://b/ckpt` must not pick up `s3://b/ckpt-old`.
    key = location.key if not location.key or location.key.endswith("/") else location.key + "/"
    return Location(location.store, key, uri)


def ledger_path(spec: HostSpec) -> Path:
    return spec.work_dir / "checkpoint-ledger.json"


class Ledger:
    """What the remote prefix holds from this host: relative path → signature of that version."""

    def __init__(self, path: Path, files: dict[str, Signature]) -> None:
        self.path, self.files = path, files

    @classmethod
    def of(cls, spec: HostSpec) -> Ledger:
        return cls.of_path(ledger_path(spec))

    @classmethod
    def of_path(cls, path: Path) -> Ledger:
        try:
            files = {k: tuple(v) for k, v in json.loads(path.read_text()).items()}
        except FileNotFoundError:
            files = {}
        return cls(path, files)

    def save(self) -> None:
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.files))
        os.replace(temporary, self.path)


def restore_checkpoints(spec: HostSpec, emit: Emit) -> None:
    folder = checkpoint_dir(spec)
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    remote = checkpoint_remote(spec)

    async def restore() -> list[Download]:
        objects = await list_prefix(remote)
        downloads = [
            Download(
                remote.store, o.key, o.size, safe_destination(folder, o.key[len(remote.key) :])
            )
            for o in objects
        ]
        meter = ProgressMeter("Downloading", sum(d.size for d in downloads), emit)
        await download_all(downloads, meter.add)
        meter.finish()
        return downloads

    try:
        downloads = asyncio.run(restore())
    except StoreError as exc:
        uri = checkpoint_plan(spec).uri
        raise StoreError(f"cannot restore the checkpoints from {uri}: {exc}") from None
    restored = {d.key[len(remote.key) :]: signature(d.destination.lstat()) for d in downloads}
    Ledger(ledger_path(spec), restored).save()


class Changes:
    """What differs between a folder (by handle) and its ledger: files to upload, to delete."""

    def __init__(self, folder: int | None, ledger: Ledger, names: set[str] | None) -> None:
        """Among `names` (relative paths), or every file of the folder and the ledger. A folder
        that is not there (None) is taken as empty."""
        local: dict[str, os.stat_result] = {}
        if folder is not None:
            local = regular_files(folder) if names is None else _present(folder, names)
        self.folder = folder
        self.uploads = {
            name: status.st_size
            for name, status in local.items()
            if ledger.files.get(name) != signature(status)
        }
        known = set(ledger.files) if names is None else names & set(ledger.files)
        self.deletes = sorted(known - set(local))

    @property
    def size(self) -> int:
        return sum(self.uploads.values())

    def __bool__(self) -> bool:
        return bool(self.uploads or self.deletes)


async def push_changes(
    changes: Changes, remote: Location, ledger: Ledger, on_bytes: OnBytes
) -> set[str]:
    """Upload and delete; returns the names that changed while read (still to do).

    The ledger follows each transfer as it succeeds, so a failure loses no completed work."""
    gate = asyncio.Semaphore(UPLOADS_IN_FLIGHT)
    changed: set[str] = set()

    async def upload(name: str) -> None:
        async with gate:
            # Opened one name at a time from the folder's handle: a folder on the way swapped
            # for a link since the listing leaves the file unread.
            fd = None if changes.folder is None else open_file(changes.folder, name)
            uploaded = None if fd is None else await upload_open(fd, remote.child(name), on_bytes)
        if uploaded is None:
            changed.add(name)
        else:
            ledger.files[name] = uploaded

    await asyncio.gather(*(upload(name) for name in changes.uploads))
    if changes.deletes:
        await _delete(remote, changes.deletes)
        for name in changes.deletes:
            del ledger.files[name]
    return changed


def push_all(changes: Changes, remote: Location, ledger: Ledger, emit: Emit) -> None:
    """Push `changes` at the end of a run, its progress shown; the ledger saved whatever
    happens."""
    meter = ProgressMeter("Uploading", changes.size, emit)
    try:
        asyncio.run(push_changes(changes, remote, ledger, meter.add))
    finally:
        ledger.save()
    meter.finish()


async def _delete(remote: Location, names: list[str]) -> None:
    """Delete the objects; one already gone is fine (another host of the job deleted it)."""
    keys = [remote.child(name).key for name in names]
    try:
        await delete_keys(remote.store, keys)
    except StoreError as exc:
        if not isinstance(exc.__cause__, FileNotFoundError):
            raise
        # A local store refuses a batch with a missing object in it (S3 does not): one by one.
        for key in keys:
            with contextlib.suppress(FileNotFoundError):
                await obstore.delete_async(remote.store, key)


def _present(folder: int, names: set[str]) -> dict[str, os.stat_result]:
    """The regular files among `names` that exist now; a link never counts as one."""
    found = {}
    for name in names:
        if (status := lstat_below(folder, name)) is not None and stat.S_ISREG(status.st_mode):
            found[name] = status
    return found


def current_signature(folder: int, name: str) -> Signature | None:
    """The signature of the file at `name` now (never through a link), None when absent."""
    status = lstat_below(folder, name)
    return None if status is None else signature(status)


def open_checkpoint_folder(spec: HostSpec, tree: HostTree, emit: Emit) -> int | None:
    """The host's checkpoint folder by handle; None (taken as empty) when missing or not a
    folder (then said in the job's log: the code replaced it by a link, say)."""
    try:
        return tree.open_checkpoints()
    except FileNotFoundError:
        return None
    except NotAFolder as exc:
        # Walked from /opt/ml (LocalPath under it) or from LocalPath itself.
        outside = tree.checkpoint_anchor != tree.ml
        base = checkpoint_plan(spec).local_path if outside else CONTAINER_ROOT
        relative = tree.checkpoint_path or ""
        consequence = "it is taken as empty: no checkpoint is uploaded from it"
        say_ignored(spec, emit, base, relative, exc, consequence)
        return None


def save_checkpoints(spec: HostSpec, tree: HostTree, emit: Emit) -> None:
    """Write back what the continuous sync has not (all of it when no sync ran)."""
    if checkpoint_dir(spec) is None:
        return
    folder = open_checkpoint_folder(spec, tree, emit)
    try:
        remote = checkpoint_remote(spec)
        ledger = Ledger.of(spec)
        changes = Changes(folder, ledger, None)
        if changes:
            push_all(changes, remote, ledger, emit)
    finally:
        if folder is not None:
            os.close(folder)
