"""The job's tree as openmaker touches it from outside the sandbox: never through a link.

The code may rename, replace or link anything under /opt/ml at any moment, while openmaker
(as root, outside the sandbox) streams FIFOs, packs artifacts and uploads checkpoints there. So
nothing is reached by a path the kernel resolves: each host keeps handles on its anchors (the
`ml/` folder, and a checkpoint folder outside it), opened before the code starts; everything
below is opened one name at a time relative to its folder's handle with O_NOFOLLOW, and its
type checked on the opened descriptor. A link, device, socket or FIFO is never followed or read.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from openmaker.runtime.spec import User
from openmaker.training.host.events import Emit, LogLine
from openmaker.training.host.layout import CONTAINER_ROOT
from openmaker.training.host.spec import HostSpec

FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO the code left there must not block.
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# Folders deeper than this are not walked: each level holds a descriptor while it is walked.
MAX_DEPTH = 128


class NotAFolder(OSError):
    """A folder the code replaced by something else: `where` (relative to the folder walked
    from) holds `what` ('a symbolic link to /root')."""

    def __init__(self, where: str, what: str) -> None:
        super().__init__(f"{where} is {what}, not a folder")
        self.where, self.what = where, what


@dataclass(frozen=True)
class Entry:
    """One entry met by walk(): `parent` is its folder's descriptor, valid while it is met."""

    path: str  # relative to the folder walked, POSIX
    name: str
    parent: int
    status: os.stat_result  # of the entry itself, never of a link's target
    handle: int | None = None  # a folder's own descriptor, valid while it is met


class HostTree:
    """Handles on one host's anchors. `ml/` is /opt/ml and an outside checkpoint folder is
    LocalPath: both are mount points in the sandbox, which the code can fill but never rename
    or replace. Opened before the code starts, held by the host (training_host.py) until
    it ends."""

    def __init__(self, spec: HostSpec) -> None:
        self.ml = open_folder(spec.ml_dir)
        self.checkpoint_anchor, self.checkpoint_path = self.ml, _checkpoint_relative(spec)
        self._outside: int | None = None
        if self.checkpoint_path is None and spec.plan.checkpoint is not None:
            outside = spec.work_dir / "checkpoints"
            try:
                outside.mkdir(exist_ok=True)
                self._outside = self.checkpoint_anchor = open_folder(outside)
            except BaseException:
                os.close(self.ml)
                raise
            self.checkpoint_path = ""

    def open(self, relative: str) -> int:
        """A folder below ml/, opened without following any link (NotAFolder, OSError)."""
        return open_below(self.ml, relative)

    def open_checkpoints(self) -> int:
        if self.checkpoint_path is None:
            raise FileNotFoundError("the job has no CheckpointConfig")
        return open_below(self.checkpoint_anchor, self.checkpoint_path)

    def close(self) -> None:
        for fd in (self.ml, self._outside):
            if fd is not None:
                os.close(fd)

    def __enter__(self) -> HostTree:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


# What the code writes below /opt/ml (its model, outputs and failure file; the File-mode data
# it may change in place), given to a non-root image USER.
WRITABLE = ("model", "output", "input/data")


def give_writable(tree: HostTree, user: User, folders: tuple[str, ...] = ()) -> None:
    """Give `user` the folders of the host's tree the code writes (and `folders`, a processing
    job's outputs), and what they hold, as a SageMaker instance's root-run container has them
    writable: through the tree's handles, one name at a time, never following a link (links
    themselves are left as they are)."""
    anchors = [(tree.ml, relative) for relative in (*WRITABLE, *folders)]
    if tree.checkpoint_path is not None:
        anchors.append((tree.checkpoint_anchor, tree.checkpoint_path))
    for anchor, relative in anchors:
        try:
            folder = open_below(anchor, relative)
        except (FileNotFoundError, NotAFolder):
            continue
        try:
            os.fchown(folder, user.uid, user.gid)
            for entry in walk(folder):
                if entry.handle is not None:
                    os.fchown(entry.handle, user.uid, user.gid)
                elif stat.S_ISREG(entry.status.st_mode):
                    os.chown(entry.name, user.uid, user.gid, dir_fd=entry.parent,
                             follow_symlinks=False)  # fmt: skip
        finally:
            os.close(folder)


def _checkpoint_relative(spec: HostSpec) -> str | None:
    """LocalPath relative to /opt/ml, or None when it lies outside (or there is none)."""
    if spec.plan.checkpoint is None:
        return None
    local = PurePosixPath(spec.plan.checkpoint.local_path)
    if not local.is_relative_to(CONTAINER_ROOT):
        return None
    return local.relative_to(CONTAINER_ROOT).as_posix()


def open_folder(path: Path) -> int:
    """One of openmaker's own folders; a link at its last name is refused all the same."""
    return os.open(path, FOLDER_FLAGS)


def open_below(folder: int, relative: str) -> int:
    """The folder at `relative` below `folder`, one name at a time, never through a link.

    NotAFolder when a name on the way is something else (a link, a file); FileNotFoundError
    when one is missing."""
    current = os.dup(folder)
    walked: list[str] = []
    try:
        for name in _names(relative):
            walked.append(name)
            try:
                following = os.open(name, FOLDER_FLAGS, dir_fd=current)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                raise NotAFolder("/".join(walked), describe(current, name)) from None
            os.close(current)
            current = following
    except BaseException:
        os.close(current)
        raise
    return current


def _names(relative: str) -> list[str]:
    names = [n for n in relative.split("/") if n and n != "."]
    if ".." in names:
        raise ValueError(f"{relative!r} leaves its folder")
    return names


def describe(folder: int, name: str) -> str:
    """What `name` in `folder` is, for a person: 'a symbolic link to /root', 'a regular file'."""
    try:
        status = os.stat(name, dir_fd=folder, follow_symlinks=False)
    except OSError:
        return "missing"
    if stat.S_ISLNK(status.st_mode):
        try:
            return f"a symbolic link to {os.readlink(name, dir_fd=folder)}"
        except OSError:
            return "a symbolic link"
    kinds = {
        stat.S_ISDIR: "a folder", stat.S_ISREG: "a regular file", stat.S_ISFIFO: "a FIFO",
        stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a device", stat.S_ISBLK: "a device",
    }  # fmt: skip
    return next((what for test, what in kinds.items() if test(status.st_mode)), "not a folder")


def open_file(folder: int, relative: str) -> int | None:
    """A regular file below `folder` opened for reading, or None: missing, or anything else (a
    link, a FIFO, a device) on the way or at its name."""
    *parents, name = _names(relative) or [""]
    try:
        parent = open_below(folder, "/".join(parents))
    except (OSError, ValueError):
        return None
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=parent)
    except OSError:
        return None
    finally:
        os.close(parent)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def lstat_below(folder: int, relative: str) -> os.stat_result | None:
    """The status of `relative` itself (never a link's target), None when it cannot be
    reached without following a link."""
    *parents, name = _names(relative) or [""]
    try:
        parent = open_below(folder, "/".join(parents))
    except (OSError, ValueError):
        return None
    try:
        return os.stat(name, dir_fd=parent, follow_symlinks=False)
    except OSError:
        return None
    finally:
        os.close(parent)


def walk(folder: int, prefix: str = "", depth: int = 0) -> Iterator[Entry]:
    """Every entry below `folder` by name, a folder before what it holds. Subfolders are opened
    relative to their parent without following links; links are met, never entered."""
    try:
        with os.scandir(folder) as listing:
            names = sorted(entry.name for entry in listing)
    except OSError:
        return  # removed meanwhile
    for name in names:
        try:
            status = os.stat(name, dir_fd=folder, follow_symlinks=False)
        except OSError:
            continue
        path = f"{prefix}{name}"
        if not stat.S_ISDIR(status.st_mode):
            yield Entry(path, name, folder, status)
            continue
        if depth >= MAX_DEPTH:
            continue
        try:
            below = os.open(name, FOLDER_FLAGS, dir_fd=folder)
        except OSError:
            continue  # swapped for a link (or removed) since: not a folder any more
        try:
            yield Entry(path, name, folder, os.fstat(below), below)
            yield from walk(below, f"{path}/", depth + 1)
        finally:
            os.close(below)


def regular_files(folder: int) -> dict[str, os.stat_result]:
    """The regular files below `folder`, by POSIX path relative to it; links are skipped."""
    return {e.path: e.status for e in walk(folder) if stat.S_ISREG(e.status.st_mode)}


def read_text_head(folder: int, relative: str, limit: int) -> str | None:
    """The first `limit` characters of a regular file the code wrote, or None."""
    fd = open_file(folder, relative)
    if fd is None:
        return None
    with os.fdopen(fd, "rb") as stream:
        # Up to 4 bytes a character in UTF-8.
        return stream.read(4 * limit).decode("utf-8", errors="replace")[:limit]


def say_ignored(
    spec: HostSpec, emit: Emit, base: str, relative: str, exc: NotAFolder, consequence: str
) -> None:
    """A line in the job's log: what openmaker ignored in the tree (`base`/`relative`, the
    folder `exc` was met opening), and why."""
    message = (
        f"openmaker ignored {_join(base, relative)}: the training program left {exc.what} at "
        f"{_join(base, exc.where)}, where a folder was expected, and openmaker never follows a "
        f"job's links; {consequence}"
    )
    emit(LogLine(spec.host_name, int(time.time() * 1000), message))


def _join(base: str, relative: str) -> str:
    return f"{base.rstrip('/')}/{relative}" if relative else base
