"""Listing a folder of this machine (the embedded store, `file://`) by reading it directly.

obstore's listing of a local folder makes a dict, a datetime and an ETag per file: for
thousands of small files that is most of a local channel's setup. This walks the folder with
directory descriptors instead, and answers only where its answer is certainly obstore's: a tree
of plain folders and regular files whose names are keys as they stand. Anything else (a link
anywhere on the way or below, a special file, a name obstore would skip, refuse or rewrite) is
None, and the caller asks obstore. No link is ever followed: every folder is opened below its
parent's descriptor with O_NOFOLLOW, so a folder swapped for a link during the walk is seen as
one, not entered.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

_OPEN_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _NotPlain(Exception):
    """The tree holds something only obstore's listing can answer for."""


def list_local(root: Path, prefix: str) -> list[tuple[str, int]] | None:
    """Every (key, size) below `root` whose key starts with `prefix` (S3 semantics), unsorted;
    None where obstore must be asked instead."""
    folder, _, partial = prefix.rpartition("/")
    found: list[tuple[str, int]] = []
    try:
        top = _open_path(root, folder)
        if top is None:
            return found
        try:
            _walk(top, f"{folder}/" if folder else "", partial, found)
        finally:
            os.close(top)
    except _NotPlain:
        return None
    except OSError:
        # Whatever went wrong (a folder removed mid-walk, no permission), obstore says it its
        # own way.
        return None
    return found


def _open_path(root: Path, folder: str) -> int | None:
    """A descriptor of `root/folder`, each segment opened without following a link; None when
    the folder does not exist (nothing is listed, as obstore lists nothing)."""
    fd = os.open(root, _OPEN_FOLDER)
    try:
        for name in folder.split("/") if folder else ():
            if not _plain_name(name):
                raise _NotPlain
            try:
                child = os.open(name, _OPEN_FOLDER, dir_fd=fd)
            except FileNotFoundError:
                return None
            except (NotADirectoryError, OSError) as exc:
                # A link (ELOOP) or a file where a folder is named: obstore's business.
                raise _NotPlain from exc
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _walk(fd: int, base: str, partial: str, found: list[tuple[str, int]]) -> None:
    """Add the files below the folder `fd` (whose key is `base`) whose names start with
    `partial` at this level (every name below it)."""
    folders: list[str] = []
    with os.scandir(fd) as entries:
        for entry in entries:
            name = entry.name
            if partial and not name.startswith(partial):
                continue
            if not _plain_name(name):
                raise _NotPlain
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(info.st_mode):
                found.append((base + name, info.st_size))
            elif stat.S_ISDIR(info.st_mode):
                folders.append(name)
            else:
                raise _NotPlain
    for name in folders:
        child = os.open(name, _OPEN_FOLDER, dir_fd=fd)
        try:
            _walk(child, f"{base}{name}/", "", found)
        finally:
            os.close(child)


def _plain_name(name: str) -> bool:
    # obstore refuses control characters and names that are not UTF-8 (surrogate escapes here:
    # neither is printable) and skips its own unfinished uploads (`name#123`).
    return name.isprintable() and "#" not in name
