"""An image's USER (`name`, `uid`, `name:group`, `uid:gid`…) resolved through the image's own
/etc/passwd and /etc/group, as Docker resolves it. The files are read inside the unpacked root:
a symbolic link in them is followed as it would be inside the container, never out of it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from openmaker.runtime.spec import User

# Symbolic links followed at most while resolving one path (the kernel's limit).
_MAX_LINKS = 40
# Larger /etc/passwd or /etc/group files are not read (an image's, not the machine's).
_MAX_BYTES = 4 * 1024 * 1024


class UserError(ValueError):
    """A USER the image does not define; the message says which, for a person."""


@dataclass(frozen=True)
class ResolvedUser:
    user: User
    home: str


def resolve_user(rootfs: Path, spec: str) -> ResolvedUser:
    """The uid, gid, supplementary groups and home of `spec` in the image at `rootfs`."""
    name, _, group = spec.partition(":")
    passwd = _entries(rootfs, "etc/passwd")
    groups = _entries(rootfs, "etc/group")
    uid, gid, home, login = 0, 0, "/", ""
    if name:
        entry = next((e for e in passwd if name in (e[0], e[2])), None)
        if entry is not None and len(entry) >= 4 and entry[2].isdigit() and entry[3].isdigit():
            login, uid, gid = entry[0], int(entry[2]), int(entry[3])
            home = entry[5] if len(entry) > 5 and entry[5] else "/"
        elif name.isdigit():
            uid = int(name)
        else:
            raise UserError(f"the image's user {name!r} is not in its /etc/passwd")
    if group:
        found = next((e for e in groups if group in (e[0], e[2])), None)
        if found is not None and len(found) >= 3 and found[2].isdigit():
            gid = int(found[2])
        elif group.isdigit():
            gid = int(group)
        else:
            raise UserError(f"the image's group {group!r} is not in its /etc/group")
    extra: list[int] = []
    if login:
        for entry in groups:
            members = entry[3].split(",") if len(entry) > 3 else []
            if login in members and entry[2].isdigit() and int(entry[2]) != gid:
                extra.append(int(entry[2]))
    return ResolvedUser(User(uid, gid, tuple(dict.fromkeys(extra))), home)


def _entries(rootfs: Path, relative: str) -> list[list[str]]:
    path = inside(rootfs, relative)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return []  # no such file: numeric users only
    with os.fdopen(fd, "rb") as file:
        if not os.path.isfile(f"/proc/self/fd/{fd}"):
            return []
        text = file.read(_MAX_BYTES).decode(errors="replace")
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def inside(rootfs: Path, path: str) -> Path:
    """`path` as the container would resolve it with `rootfs` as its root: `..` stops at the
    root, and symbolic links (absolute ones from the root) are followed within it."""
    pending = list(reversed(PurePosixPath(path).parts))
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop()
        if part in ("/", ".", ""):
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = rootfs.joinpath(*resolved, part)
        if candidate.is_symlink():
            links += 1
            if links > _MAX_LINKS:
                raise UserError(f"too many symbolic links in the image's {path}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            pending.extend(reversed(PurePosixPath(target).parts))
            continue
        resolved.append(part)
    return rootfs.joinpath(*resolved)
