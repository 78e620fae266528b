"""The command that starts a container in a bubblewrap sandbox, and stops it as `docker stop`
would.

The sandbox shows a copy-on-write view of the machine's root filesystem (overlayfs mounted in a
private mount namespace, since Debian's bwrap has no --overlay; see enter.py): the code may
write anywhere, a `pip install` included, and the machine stays untouched. What the spec hides
shows empty, and what it removes not at all; the code cannot make user namespaces. It has its
own hostname, IPC and process tree, and runs as PID 1 of its own PID namespace, so SIGTERM
reaches it only if it handles it, and when it ends every process it left behind ends with it —
the semantics of a container's entrypoint.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from openmaker.runtime.enter import Setup, arguments
from openmaker.runtime.layers import cover, layer_folder, make_mount_points
from openmaker.runtime.spec import Bind, ContainerSpec, User
from openmaker.runtime.switch_user import user_command

# The program that prepares the namespaces, then becomes bwrap: enter.py, imported from its
# folder (given first), which it takes off its arguments. Appended to the path: nothing there
# stands for a module of the standard library.
_ENTER_FOLDER = str(Path(__file__).parent)
_ENTER = "import sys; sys.path.append(sys.argv.pop(1)); import enter; enter.run_program()"


def unavailable_reason() -> str | None:
    """Why the bubblewrap sandbox cannot be used here, or None when it can."""
    if shutil.which("bwrap") is None:
        return "bwrap (Debian package bubblewrap) is not installed"
    if os.geteuid() != 0:
        return "the copy-on-write root needs root privileges"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    return None


PROC_READ_ONLY = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs")


def sandbox_command(spec: ContainerSpec, info_fd: int) -> list[str]:
    """enter.py, then bwrap, then the spec's argv; bwrap writes the code's PID (as seen from
    here) to `info_fd`. Prepares the copy-on-write layers and the files shown to the code."""
    state = spec.state_dir
    layers = [(layer_folder(state, index), lower) for index, lower in enumerate(spec.layers)]
    left_to_cover: list[Path] = []
    for folder, lower in layers:
        left_to_cover += cover(folder / "upper", lower, list(spec.hidden), list(spec.removed))
    views = _unnamed_views(spec)
    binds: list[tuple[str, ...]] = [("--bind", str(layers[0][0] / "merged"), "/")]
    binds += [("--dev", "/dev"), ("--proc", "/proc"), ("--ro-bind", "/sys", "/sys")]
    # The code is root: through a writable /proc/sys it could name a program the kernel runs as
    # the machine's root (kernel.core_pattern). Read-only, as Docker shows them.
    binds += [("--ro-bind-try", path, path) for path in PROC_READ_ONLY]
    binds.append(_tmp(spec))
    shm_size = ("--size", str(spec.shm_size)) if spec.shm_size else ()
    binds.append((*shm_size, "--perms", "1777", "--tmpfs", "/dev/shm"))
    binds += [("--tmpfs", str(path)) for path in left_to_cover]
    binds += [("--bind", str(folder / "merged"), lower) for folder, lower in layers[1:]]
    argv, user_binds = spec.argv, list[Bind]()
    if spec.user is not None and spec.user != User(0, 0):
        user_binds, argv = user_command(spec.user, spec.capabilities, spec.argv)
    binds += [("--dev-bind", device, device) for device in spec.devices]
    for bind in [*spec.binds, *user_binds]:
        kind = "--ro-bind" if bind.read_only else "--bind"
        binds.append((kind, views.get(bind.source, bind.source), bind.target))
    if spec.etc_hosts is not None:
        hosts = state / "hosts"
        hosts.write_text(spec.etc_hosts)
        binds.append(("--ro-bind", str(hosts), "/etc/hosts"))
    if spec.layers[0] != "/":  # an image's root: its WORKDIR and mount points may be missing
        # A bind's own target is made by bwrap (a file or a folder, as its source is).
        points = [spec.workdir, *(str(Path(b.target).parent) for b in [*spec.binds, *user_binds])]
        make_mount_points(layers[0][0] / "upper", spec.layers[0], points)
    options = [
        ("--unshare-pid",), ("--unshare-uts",), ("--unshare-ipc",),
        *([("--hostname", spec.hostname)] if spec.hostname else []),
        ("--as-pid-1",), ("--die-with-parent",),
        ("--info-fd", str(info_fd)), ("--chdir", spec.workdir),
        ("--assert-userns-disabled",),
    ]  # fmt: skip
    options.append(("--cap-drop", "ALL"))
    options += [("--cap-add", capability) for capability in spec.capabilities]
    if spec.isolate_network:
        options.append(("--unshare-net",))  # loopback alone
    bwrap = ["bwrap", *(part for group in [*binds, *options] for part in group)]
    setup = Setup(
        detach_under=str(spec.detach_mounts_under or state),
        keep=str(state),
        layers=[(str(folder), lower) for folder, lower in layers],
        views=list(views.items()),
        empty=str(_empty_folder(spec)),
        userns=True,
        netns_fd=spec.netns_fd,
    )
    enter = [sys.executable, "-I", "-S", "-c", _ENTER, _ENTER_FOLDER, *arguments(setup), "--"]
    enter += [*bwrap, "--"]
    return [*enter, *argv]


def _unnamed_views(spec: ContainerSpec) -> dict[str, str]:
    """The folder each `unnamed` bind's source is shown through: an overlay mounted by
    enter.py, whose options do not name the source as a bind's would."""
    sources = [bind.source for bind in spec.binds if bind.unnamed]
    views = {}
    for index, source in enumerate(dict.fromkeys(sources)):
        view = spec.state_dir / "views" / str(index)
        view.mkdir(parents=True, exist_ok=True)
        views[source] = str(view)
    return views


def _empty_folder(spec: ContainerSpec) -> Path:
    empty = spec.state_dir / "views" / "empty"
    empty.mkdir(parents=True, exist_ok=True)
    return empty


def _tmp(spec: ContainerSpec) -> tuple[str, ...]:
    if spec.tmp is None:
        return ("--perms", "1777", "--tmpfs", "/tmp")
    return ("--bind", str(spec.tmp), "/tmp")
