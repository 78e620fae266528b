"""The steps before bubblewrap that bwrap 0.8 cannot take itself, then bubblewrap.

Run as a program with the standard library only (it starts in milliseconds):
`python -I -S -c LOADER FOLDER SETUP... -- bwrap ...` (sandbox.py), SETUP being plain arguments
(`arguments`; no JSON: its import was a third of this program's start); LOADER imports this
module from its FOLDER, so that its compiled code is cached (a script given by path is compiled
at every start). As root, in order:
1. A private mount namespace, without the mounts under the jobs' folder other than this host's
   own: another job's volume must go away when that job ends, not when this one does.
2. The copy-on-write root: one overlay per layer, mounted from inside the layer's folder with
   relative paths, so that the mount options the code can read in /proc/self/mountinfo name no
   folder of openmaker's. Likewise read-only views of openmaker's folders that the sandbox
   shows (FastFile over the embedded store): a bind would show their path.
3. A user namespace mapping every user and group to itself, in which no further user namespace
   may be made (`max_user_namespaces` 0, which the code, without CAP_SYS_RESOURCE, cannot
   raise): the code stays root with its few capabilities and cannot get a full set in a
   namespace of its own. bwrap's `--disable-userns` would map root alone.
Before all of them, the host's own network namespace is entered (`netns_fd`, a descriptor made
by openmaker.runtime.network), while this process still has every capability to do it.
Every step happens in this same process, which then becomes bubblewrap: whatever was set on it
before (its cgroups, its parent-death signal) holds for the sandbox.
"""

from __future__ import annotations

import ctypes
import os
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
# Every user and group id, each mapped to itself.
IDENTITY_MAP = "0 0 4294967295\n"

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def private_mount_namespace(detach_under: str, keep: str) -> None:
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "making / private")
    points = []
    with open("/proc/self/mountinfo", "rb") as table:
        for line in table:
            point = unescape(line.split()[4])
            inside = point.startswith(detach_under.rstrip("/") + "/")
            # What holds `keep` stays too (the volume its owner's folder is on).
            holds_keep = keep.startswith(point.rstrip("/") + "/")
            if inside and point != keep and not holds_keep and not point.startswith(keep + "/"):
                points.append(point)
    for point in sorted(points, reverse=True):
        _libc.umount2(os.fsencode(point), MNT_DETACH)  # gone already with its parent: fine


def mount_overlay(folder: str, lower: str) -> None:
    """Mount `folder`/merged: `lower` below, `folder`/upper above (with `folder`/work)."""
    os.chdir(folder)
    options = f"lowerdir={lower},upperdir=upper,workdir=work".encode()
    _check(_libc.mount(b"overlay", b"merged", b"overlay", 0, options), f"overlay of {lower}")
    os.chdir("/")


def mount_read_only_view(source: str, view: str, empty: str) -> None:
    """Mount at `view` a read-only overlay of `source` (over the empty folder `empty`), named
    in its options by descriptor only."""
    below = os.open(source, os.O_PATH | os.O_DIRECTORY)
    nothing = os.open(empty, os.O_PATH | os.O_DIRECTORY)
    try:
        # Without an upper layer an overlay needs two lower ones, and is read-only.
        options = f"lowerdir=/proc/self/fd/{below}:/proc/self/fd/{nothing}".encode()
        _check(_libc.mount(b"overlay", os.fsencode(view), b"overlay", 0, options), "view")
    finally:
        os.close(below)
        os.close(nothing)


def user_namespace_without_nesting() -> None:
    """Enter a new user namespace mapping every id to itself; forbid user namespaces in it."""
    parent = os.getpid()
    ready_read, ready_write = os.pipe()
    child = os.fork()
    if child == 0:
        # Stays in the machine's user namespace, where root may write any mapping.
        os.close(ready_write)
        status = 1
        try:
            if os.read(ready_read, 1) == b"u":
                for name in ("uid_map", "gid_map"):
                    with open(f"/proc/{parent}/{name}", "w") as mapping:
                        mapping.write(IDENTITY_MAP)
                status = 0
        finally:
            os._exit(status)
    os.close(ready_read)
    try:
        _check(_libc.unshare(CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")
        os.write(ready_write, b"u")
    finally:
        os.close(ready_write)
    _, status = os.waitpid(child, 0)
    if status != 0:
        raise OSError("could not map the users of the sandbox's user namespace")
    with open("/proc/sys/user/max_user_namespaces", "w") as limit:
        limit.write("0")


class Setup:
    """What enter.py does before bubblewrap (see the module's description). A plain class:
    dataclasses' import would cost this program's start more than json's did."""

    def __init__(
        self,
        detach_under: str,  # the mounts under it go, but for those of `keep`
        keep: str,
        layers: list[tuple[str, str]],  # (folder, its lower folder): an overlay each
        views: list[tuple[str, str]],  # (source, view): a read-only view each
        empty: str,  # an empty folder (the views' second lower layer)
        userns: bool,
        netns_fd: int | None,
    ) -> None:
        self.detach_under, self.keep, self.empty = detach_under, keep, empty
        self.layers, self.views = layers, views
        self.userns, self.netns_fd = userns, netns_fd


def arguments(setup: Setup) -> list[str]:
    """`setup` as enter.py's arguments (before its `--`): each pair list after its length."""
    pairs = [
        part for given in (setup.layers, setup.views) for part in (str(len(given)), *sum(given, ()))
    ]
    fd = "" if setup.netns_fd is None else str(setup.netns_fd)
    fixed = [setup.detach_under, setup.keep, setup.empty, "1" if setup.userns else "0", fd]
    return [*fixed, *pairs]


def parse(argv: list[str]) -> tuple[Setup, list[str]]:
    """(the setup, the command after `--`) of enter.py's arguments (`argv[0]` its own name)."""
    detach_under, keep, empty, userns, fd = argv[1:6]
    position = 6
    pairs: list[list[tuple[str, str]]] = []
    for _ in range(2):
        count = int(argv[position])
        given = argv[position + 1 : position + 1 + 2 * count]
        pairs.append(list(zip(given[::2], given[1::2], strict=True)))
        position += 1 + 2 * count
    if argv[position] != "--":
        raise OSError(f"enter.py: -- expected where {argv[position]!r} is")
    setup = Setup(
        detach_under, keep, pairs[0], pairs[1], empty, userns == "1", int(fd) if fd else None
    )
    return setup, argv[position + 1 :]


def main(argv: list[str]) -> None:
    setup, command = parse(argv)
    if setup.netns_fd is not None:
        _check(_libc.setns(setup.netns_fd, CLONE_NEWNET), "entering the host's network")
        os.close(setup.netns_fd)
    private_mount_namespace(setup.detach_under, setup.keep)
    for folder, lower in setup.layers:
        mount_overlay(folder, lower)
    for source, view in setup.views:
        mount_read_only_view(source, view, setup.empty)
    if setup.userns:
        user_namespace_without_nesting()
    os.execvp(command[0], command)


def unescape(field: bytes) -> str:
    """A path as /proc/self/mountinfo writes it (octal escapes for space, tab, newline, \\)."""
    if b"\\" not in field:  # nearly every path: the loop below is per character
        return os.fsdecode(field)
    out, i = bytearray(), 0
    while i < len(field):
        if field[i : i + 1] == b"\\" and field[i + 1 : i + 4].isdigit():
            out.append(int(field[i + 1 : i + 4], 8))
            i += 4
        else:
            out += field[i : i + 1]
            i += 1
    return os.fsdecode(bytes(out))


def run_program() -> None:
    """The program: `sys.argv` holds the setup, then the command."""
    try:
        main(sys.argv)
    except (OSError, ValueError, IndexError) as exc:  # ValueError, IndexError: bad arguments
        print(f"openmaker sandbox: {exc}", file=sys.stderr)
        sys.exit(125)


if __name__ == "__main__":
    run_program()
