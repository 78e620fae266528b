"""Running a sandboxed container as a user other than root: bwrap 0.8 changes users only
through a user namespace of its own (which would also remap every file's owner), so the
container's first program is the machine's `setpriv`, which sets the user, groups and
supplementary groups and then executes the container's argv (PID 1 stays PID 1).

An image's root filesystem has its own libraries, or none: setpriv is started through the
machine's dynamic loader with the machine's libraries, all shown read-only in one folder. The
kernel drops every capability when root becomes another user; `--no-new-privs` (bwrap sets it
as well) keeps set-user-ID programs of the image from winning any back.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path

from openmaker.runtime.spec import Bind, User

# Where the container sees setpriv and what it needs.
FOLDER = "/.openmaker-user"
_LIBRARY = re.compile(r"(/\S+) \(0x[0-9a-f]+\)$")


@functools.cache
def _setpriv_files() -> tuple[Path, Path, tuple[Path, ...]]:
    """setpriv, the dynamic loader, and the libraries it links."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise RuntimeError("setpriv (Debian package util-linux) is not installed")
    listing = subprocess.run(["ldd", setpriv], capture_output=True, text=True, check=True)
    paths = [Path(m.group(1)) for line in listing.stdout.splitlines()
             if (m := _LIBRARY.search(line.strip()))]  # fmt: skip
    loader = next(path for path in paths if path.name.startswith("ld-linux"))
    return Path(setpriv), loader, tuple(path for path in paths if path != loader)


def user_command(
    user: User, capabilities: tuple[str, ...], argv: list[str]
) -> tuple[list[Bind], list[str]]:
    """The binds and argv that run `argv` as `user`, whose bounding set is at most
    `capabilities` and whose inheritable set is empty."""
    setpriv, loader, libraries = _setpriv_files()
    binds = [Bind(str(path.resolve()), f"{FOLDER}/{path.name}") for path in libraries]
    binds += [Bind(str(loader.resolve()), f"{FOLDER}/loader")]
    binds += [Bind(str(Path(setpriv).resolve()), f"{FOLDER}/setpriv")]
    groups = ["--groups", ",".join(map(str, user.groups))] if user.groups else ["--clear-groups"]
    prefix = [f"{FOLDER}/loader", "--library-path", FOLDER, f"{FOLDER}/setpriv"]
    bounding = ",".join(["-all", *(f"+{c.removeprefix('CAP_').lower()}" for c in capabilities)])
    prefix += [f"--reuid={user.uid}", f"--regid={user.gid}", *groups, "--inh-caps=-all"]
    prefix += [f"--bounding-set={bounding}", "--no-new-privs", "--"]
    return binds, [*prefix, *argv]
