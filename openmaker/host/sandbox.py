"""Starting a host's code in a bubblewrap sandbox, and stopping it as `docker stop` would.

The sandbox shows the host's tree at /opt/ml, a private /tmp, its own hostname and process
tree, and a copy-on-write view of the machine's root filesystem (overlayfs mounted in a private
mount namespace, since Debian's bwrap has no --overlay; see openmaker/host/enter.py): the code
may write anywhere, a `pip install` included, and the machine stays untouched. What the machine
keeps private (`/root`, `/home`, `/etc/shadow`, ssh host keys…; `OPENMAKER_SANDBOX_HIDE`) shows
empty, and openmaker's own folder not at all; the code cannot make user namespaces. It runs as
PID 1 of its own PID namespace, so SIGTERM reaches it only if it handles it, and when it ends
every process it left behind ends with it — the semantics of a container's entrypoint.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

from openmaker.host.checkpoints import checkpoint_dir
from openmaker.host.fastfile import sandbox_binds
from openmaker.host.images import PROGRAM_MOUNT, Image
from openmaker.host.layout import CONTAINER_ROOT, checkpoint_local_path
from openmaker.host.limits import confine
from openmaker.host.network import SHARED_ADDRESS_BASE, HostNamespace, enter_host, shared
from openmaker.host.spec import HostSpec
from openmaker.host.ssh import ssh_binds
from openmaker.host.volume import note as volume_note
from openmaker.host.volume import observe as observe_volume
from openmaker.host.volume import volume_of
from openmaker.settings import Settings

# Without a network of their own, each host gets its own loopback address, so that `algo-2`
# reaches `algo-1` by name.
HOST_ADDRESS_BASE = SHARED_ADDRESS_BASE

# The code runs as root, but only with Docker's default capabilities, less CAP_MKNOD and
# CAP_NET_RAW (no device cgroup would contain the one; the other would reach the machine's
# network where the host shares it): no mounts, no device nodes, no raw sockets — nothing that
# reaches past the sandbox.
CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_AUDIT_WRITE",
    "CAP_SETFCAP",
)  # fmt: skip

# The program that prepares the namespaces, then becomes bwrap.
_ENTER = Path(__file__).with_name("enter.py")
# An overlay's mark of a folder that hides the one below it.
_OPAQUE = "trusted.overlay.opaque"


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: dict[str, str]
    cwd: str
    sandboxed: bool
    note: str
    # bwrap writes the code's PID (as seen from here) into this pipe: (read end, write end).
    info_pipe: tuple[int, int] | None = None
    # The host's folder, whose volume is looked at when the code ends.
    host_folder: Path | None = None
    # The host's network namespace, entered by enter.py; closed by the caller once it ends.
    namespace: HostNamespace | None = None


def sandbox_unavailable_reason(settings: Settings) -> str | None:
    """Why the bubblewrap sandbox cannot be used here, or None when it can."""
    if not settings.sandbox:
        return "OPENMAKER_SANDBOX=none"
    if shutil.which("bwrap") is None:
        return "bwrap (Debian package bubblewrap) is not installed"
    if os.geteuid() != 0:
        return "the copy-on-write root needs root privileges"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    return None


def hosts_file(spec: HostSpec) -> str:
    network = spec.network or shared(spec.hosts, "")
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"{network.addresses[name]}\t{name}" for name in spec.hosts]
    return "\n".join(lines) + "\n"


def plan_launch(spec: HostSpec, image: Image, command: list[str], env: dict[str, str]) -> Launch:
    """How to start the host's code: sandboxed, held to its share of the machine."""
    launch = _plan_launch(spec, image, command, env)
    confinement = confine(spec)
    note = "; ".join(part for part in (launch.note, confinement.note, volume_note(spec)) if part)
    return replace(
        launch,
        argv=[*confinement.prefix, *launch.argv],
        env={**launch.env, **confinement.env},
        note=note,
    )


def _plan_launch(spec: HostSpec, image: Image, command: list[str], env: dict[str, str]) -> Launch:
    reason = sandbox_unavailable_reason(spec.settings)
    if reason is not None:
        return _plain_launch(spec, image, command, env, reason)
    etc_hosts = spec.work_dir / "hosts"
    etc_hosts.write_text(hosts_file(spec))
    hidden = hidden_paths(spec.settings.sandbox_hide)
    # Copy-on-write layers: the root filesystem, then the folders the sandbox would not show
    # otherwise (the Python that runs script mode may live under /tmp or on another disk).
    lowers = ["/", *_unseen_python_folders(spec, hidden)]
    layers = [(_layer_folder(spec, index), lower) for index, lower in enumerate(lowers)]
    left_to_cover: list[Path] = []
    for folder, lower in layers:
        left_to_cover += _cover(folder / "upper", lower, hidden, spec.hidden_paths)

    namespace = None
    if not spec.request.get("EnableNetworkIsolation") and spec.network and spec.network.bridge:
        namespace = enter_host(spec.network, spec.host_name, spec.host_index)
    info_read, info_write = os.pipe()
    os.set_inheritable(info_write, True)
    binds: list[tuple[str, ...]] = [("--bind", str(layers[0][0] / "merged"), "/")]
    binds += [("--dev", "/dev"), ("--proc", "/proc"), ("--ro-bind", "/sys", "/sys")]
    binds += [_tmp_bind(spec), _shm_mount(spec)]
    binds += [("--tmpfs", str(path)) for path in left_to_cover]
    binds += [("--bind", str(folder / "merged"), lower) for folder, lower in layers[1:]]
    binds += [("--bind", str(spec.ml_dir), CONTAINER_ROOT)]
    views = _read_only_views(spec)
    binds += [
        ("--ro-bind", views.get(source, source), target) for source, target in sandbox_binds(spec)
    ]
    binds += [("--ro-bind", str(etc_hosts), "/etc/hosts")]
    binds += ssh_binds(spec)  # the job's ssh keys and configuration, when mpirun needs them
    checkpoints = checkpoint_dir(spec)
    if checkpoints is not None and not checkpoints.is_relative_to(spec.ml_dir):
        binds.append(("--bind", str(checkpoints), checkpoint_local_path(spec)))
    if image.program_dir is not None:
        binds.append(("--ro-bind", str(image.program_dir), PROGRAM_MOUNT))
    options = [
        ("--unshare-pid",), ("--unshare-uts",), ("--unshare-ipc",),
        ("--hostname", spec.host_name), ("--as-pid-1",), ("--die-with-parent",),
        ("--info-fd", str(info_write)), ("--chdir", _workdir(image)),
        ("--assert-userns-disabled",),
    ]  # fmt: skip
    options.append(("--cap-drop", "ALL"))
    options += [("--cap-add", capability) for capability in CAPABILITIES]
    if spec.request.get("EnableNetworkIsolation"):
        options.append(("--unshare-net",))  # loopback alone
    bwrap = ["bwrap", *(part for group in [*binds, *options] for part in group)]
    setup = {
        "detach_under": str(spec.settings.jobs_dir),
        "keep": str(spec.work_dir),
        "layers": [[str(folder), lower] for folder, lower in layers],
        "views": list(views.items()),
        "empty": str(_empty_folder(spec)),
        "userns": True,
        "netns_fd": namespace.fd if namespace is not None else None,
    }
    argv = [sys.executable, "-I", "-S", str(_ENTER), json.dumps(setup), "--", *bwrap, "--"]
    argv += command
    note = f"sandboxed with bubblewrap as host {spec.host_name}"
    if spec.request.get("EnableNetworkIsolation"):
        note += ", network isolation (loopback only)"
    elif spec.network is not None:
        note += f", {spec.network.note}"
    return Launch(
        argv,
        env,
        "/",
        True,
        note,
        info_pipe=(info_read, info_write),
        host_folder=spec.work_dir,
        namespace=namespace,
    )


def _read_only_views(spec: HostSpec) -> dict[str, str]:
    """Folders of openmaker's own home shown read-only (FastFile over the embedded store): each
    through an overlay mounted by enter.py, whose options do not name it as a bind would."""
    home = spec.settings.home
    sources = [source for source, _ in sandbox_binds(spec) if Path(source).is_relative_to(home)]
    views = {}
    for index, source in enumerate(dict.fromkeys(sources)):
        view = spec.work_dir / "views" / str(index)
        view.mkdir(parents=True, exist_ok=True)
        views[source] = str(view)
    return views


def _empty_folder(spec: HostSpec) -> Path:
    empty = spec.work_dir / "views" / "empty"
    empty.mkdir(parents=True, exist_ok=True)
    return empty


def hidden_paths(patterns: tuple[str, ...]) -> list[Path]:
    """What the sandbox shows empty: the paths the patterns (OPENMAKER_SANDBOX_HIDE, see
    openmaker/settings.py) match."""
    found = {Path(os.path.realpath(match)) for p in patterns for match in glob.glob(p)}
    return sorted(found)


def _cover(upper: Path, lower: str, hidden: list[Path], gone: list[Path]) -> list[Path]:
    """Prepare the upper layer over `lower` so that the overlay shows each of `hidden` empty
    (a folder that hides the one below, an empty file) and none of `gone` (openmaker's own
    folders). Returns the folders it could not cover that way (to cover with a tmpfs)."""
    device = os.stat(lower).st_dev
    whiteouts = {Path(os.path.realpath(path)) for path in gone}
    left = []
    for path in [*hidden, *whiteouts]:
        if not path.is_relative_to(lower) or path == Path(lower) or path.is_relative_to("/tmp"):
            continue
        try:
            below = os.lstat(path)
        except OSError:
            continue
        if below.st_dev != device:
            continue  # another filesystem: the overlay does not show it
        target = upper / path.relative_to(lower)
        _copy_parents(upper, Path(lower), target.parent)
        if target.exists() or target.is_symlink():
            continue  # a folder above it is covered already
        if path in whiteouts:
            os.mknod(target, stat.S_IFCHR | 0o600, os.makedev(0, 0))  # an overlay whiteout
        elif stat.S_ISDIR(below.st_mode):
            target.mkdir()
            try:
                os.setxattr(target, _OPAQUE, b"y")
            except OSError:
                left.append(path)
        else:
            target.touch()
        if path not in whiteouts:
            _copy_attributes(below, target)
    return left


def _copy_parents(upper: Path, lower: Path, folder: Path) -> None:
    """Create `folder` (in the upper layer) and its parents as the overlay would, with the
    owner and mode of the folders below: the merged view shows the upper ones."""
    relative = folder.relative_to(upper)
    for depth in range(1, len(relative.parts) + 1):
        part = Path(*relative.parts[:depth])
        target = upper / part
        if not target.exists():
            target.mkdir()
            _copy_attributes(os.lstat(lower / part), target)


def _copy_attributes(below: os.stat_result, target: Path) -> None:
    os.chown(target, below.st_uid, below.st_gid, follow_symlinks=False)
    os.chmod(target, stat.S_IMODE(below.st_mode))
    os.utime(target, ns=(below.st_atime_ns, below.st_mtime_ns), follow_symlinks=False)


def _tmp_bind(spec: HostSpec) -> tuple[str, ...]:
    """/tmp: a folder of the host's volume (held to it), else a tmpfs as before volumes."""
    volume = volume_of(spec.work_dir)
    if volume is None or not volume.mounted:
        return ("--perms", "1777", "--tmpfs", "/tmp")
    tmp = spec.work_dir / "tmp"
    tmp.mkdir(exist_ok=True)
    tmp.chmod(0o1777)
    return ("--bind", str(tmp), "/tmp")


def _shm_mount(spec: HostSpec) -> tuple[str, ...]:
    """/dev/shm: memory, so a tmpfs; held to the host's memory (it counts against it too)."""
    memory = spec.resources.memory if spec.resources is not None else None
    size = ("--size", str(memory)) if memory else ()
    return (*size, "--perms", "1777", "--tmpfs", "/dev/shm")


def _layer_folder(spec: HostSpec, index: int) -> Path:
    """The folder of one copy-on-write layer of the host: its upper, work and merged folders."""
    base = spec.work_dir / "root" / str(index)
    for name in ("upper", "work", "merged"):
        (base / name).mkdir(parents=True, exist_ok=True)
    return base


def _unseen_python_folders(spec: HostSpec, hidden: list[Path]) -> list[str]:
    """openmaker's Python folders that the root layer would not show: on another filesystem
    than `/`, or under a folder the sandbox covers (/tmp, openmaker's home, hidden folders)."""
    root_device = os.stat("/").st_dev
    covered = [Path("/tmp"), *spec.hidden_paths, *hidden]
    unseen = []
    for prefix in sorted({os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix)}):
        path = Path(prefix)
        if os.stat(path).st_dev != root_device or any(path.is_relative_to(c) for c in covered):
            unseen.append(prefix)
    return unseen


def _workdir(image: Image) -> str:
    return PROGRAM_MOUNT if image.program_dir is not None else "/"


def _plain_launch(
    spec: HostSpec, image: Image, command: list[str], env: dict[str, str], reason: str
) -> Launch:
    env = dict(env)
    env["SAGEMAKER_BASE_DIR"] = str(spec.ml_dir)
    # Without our /etc/hosts the host names do not resolve; the toolkit would wait for them.
    env["SM_STUDIO_LOCAL_MODE"] = "true"
    if image.program_dir is not None:
        env["PATH"] = env["PATH"].replace(PROGRAM_MOUNT, str(image.program_dir))
    cwd = str(image.program_dir or spec.ml_dir)
    note = f"running without a sandbox ({reason}); the code sees SAGEMAKER_BASE_DIR, not /opt/ml"
    if spec.network is not None and spec.network.bridge is None:
        note += f"; {spec.network.note}"
    return Launch(command, env, cwd, False, note, host_folder=spec.work_dir)


class Process:
    """The running code of one host."""

    def __init__(self, launch: Launch) -> None:
        self.launch = launch
        pass_fds = [launch.info_pipe[1]] if launch.info_pipe is not None else []
        if launch.namespace is not None:
            pass_fds.append(launch.namespace.fd)
        executable = launch.argv[0]
        if not launch.sandboxed:
            executable = shutil.which(executable, path=launch.env.get("PATH")) or executable
        self.popen = subprocess.Popen(
            [executable, *launch.argv[1:]],
            env=launch.env,
            cwd=launch.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            pass_fds=pass_fds,
        )
        self.container_pid: int | None = None
        if launch.info_pipe is not None:
            os.close(launch.info_pipe[1])
            self.container_pid = _read_child_pid(launch.info_pipe[0])

    @property
    def stdout(self) -> IO[bytes]:
        assert self.popen.stdout is not None
        return self.popen.stdout

    def signal(self, signum: int) -> None:
        """Deliver to the container's PID 1, or to the plain process group."""
        try:
            if self.container_pid is not None:
                os.kill(self.container_pid, signum)
            else:
                os.killpg(self.popen.pid, signum)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        self.signal(signal.SIGTERM)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.container_pid is not None:
            # bwrap itself is in the process group of the launch.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        code = self.popen.wait(timeout)
        if self.launch.host_folder is not None:
            # Now, before anything of the host is cleaned up: was its volume full?
            observe_volume(self.launch.host_folder)
        return code


def _read_child_pid(read_fd: int) -> int | None:
    with os.fdopen(read_fd, "rb") as info:
        data = info.read()
    try:
        return int(json.loads(data)["child-pid"])
    except (ValueError, KeyError):
        return None  # bwrap failed before starting the code; its exit status says why
