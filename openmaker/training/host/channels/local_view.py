"""A File-mode channel whose objects are files of this machine (the embedded store, `file://`)
shown to the job as a copy-on-write view instead of copied: an overlay whose lower layer is the
store's own folder and whose upper layer is on the host's volume.

The job may write to (or delete, or replace) its input files: the overlay copies a file up
before its first write, so the store's folder is never written. What the channel does not give
this host (another host's share, the folder's other files) is hidden by a whiteout in the upper
layer, so the view holds exactly the channel's objects at their paths, as a download would.
Where a view cannot say that (objects from several folders, a path that is a link in the store,
no root), the caller copies. The overlay is mounted under the host's folder, in the machine's
mount namespace: it goes with the host's volume (`volume.detach`) or with the job's folder
(`site.clear_job`'s `unmount_under`), and its options name descriptors, not openmaker's folders
(the job can read /proc/self/mountinfo).
"""

from __future__ import annotations

import ctypes
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from obstore.store import LocalStore

from openmaker.training.host.channels.objects import ChannelObject

_libc = ctypes.CDLL(None, use_errno=True)


def local_source(objects: Sequence[ChannelObject]) -> tuple[Path, set[str]] | None:
    """The folder of this machine that holds every object at its path in the channel, and
    those paths; None for objects of an S3 server, of several folders, or at other relative
    paths."""
    # Plain string work, once per object: Path operations per object cost more than the
    # overlay itself (2,000 objects: ~0.1 s of relative_to and joins).
    bases: set[tuple[int, str]] = set()
    stores: dict[int, LocalStore] = {}
    wanted: set[str] = set()
    for item in objects:
        store = item.store
        if not isinstance(store, LocalStore):
            return None
        relative = item.relative
        if not relative or not item.key.endswith(relative):
            return None
        base = item.key[: len(item.key) - len(relative)]
        if base and not base.endswith("/"):
            return None
        stores[id(store)] = store
        bases.add((id(store), base))
        # A path that is not plain ("a//b", "./a") matches no scanned path: `_unwanted` then
        # finds fewer files than wanted and the channel is copied.
        wanted.add(relative)
    if len(bases) != 1:
        return None
    ((store_id, base),) = bases
    return Path(stores[store_id].prefix or "/") / base, wanted


def show_view(lower: Path, wanted: set[str], target: Path, layer: Path) -> bool:
    """Mount at `target` (an empty folder) a copy-on-write view of the files `wanted` (paths
    relative to `lower`), its writes kept in `layer`. False where it cannot (nothing mounted,
    nothing left in `layer` that matters): the caller copies instead."""
    if os.geteuid() != 0:
        return False
    try:
        hidden = _unwanted(lower, wanted)
    except OSError:
        return False
    if hidden is None:
        return False
    upper, work = layer / "upper", layer / "work"
    upper.mkdir(parents=True, exist_ok=True)
    work.mkdir(exist_ok=True)
    for relative in hidden:
        path = upper / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        # A whiteout: the overlay shows nothing at this path, whatever the lower layer has.
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(0, 0))
    try:
        _mount_overlay(lower, upper, work, target)
    except OSError:
        return False
    return True


def _unwanted(lower: Path, wanted: set[str]) -> list[str] | None:
    """The topmost paths below `lower` to hide so that only `wanted` shows; None when a wanted
    path is not a regular file reached without a link (the view would not match a copy)."""
    # Every folder on the way to a wanted file stays; below any other, one whiteout hides all.
    keep = {"."}
    for relative in wanted:
        parent = os.path.dirname(relative)
        while parent and parent not in keep:
            keep.add(parent)
            parent = os.path.dirname(parent)
    hidden: list[str] = []
    found = 0
    pending = ["."]
    while pending:
        folder = pending.pop()
        with os.scandir(lower / folder) as entries:
            for entry in entries:
                relative = entry.name if folder == "." else f"{folder}/{entry.name}"
                if relative in wanted:
                    if not entry.is_file(follow_symlinks=False):
                        return None
                    found += 1
                elif relative in keep and entry.is_dir(follow_symlinks=False):
                    pending.append(relative)
                else:
                    hidden.append(relative)
    return hidden if found == len(wanted) else None


def _mount_overlay(lower: Path, upper: Path, work: Path, target: Path) -> None:
    flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fds = [os.open(folder, flags) for folder in (lower, upper, work)]
    try:
        names = [f"/proc/self/fd/{fd}" for fd in fds]
        options = f"lowerdir={names[0]},upperdir={names[1]},workdir={names[2]}".encode()
        if _libc.mount(b"overlay", os.fsencode(target), b"overlay", 0, options) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"overlay at {target}: {os.strerror(error)}")
    finally:
        for fd in fds:
            os.close(fd)
