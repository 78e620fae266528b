"""Starting a host's code in a bubblewrap sandbox, and stopping it as `docker stop` would.

The sandbox shows the host's tree at /opt/ml, a private /tmp, its own hostname and process
tree, and a copy-on-write view of the machine's root filesystem (overlayfs mounted in a private
mount namespace, since Debian's bwrap has no --overlay): the code may write anywhere, a
`pip install` included, and the machine stays untouched. The code runs as PID 1 of its own
PID namespace, so SIGTERM reaches it only if it handles it, and when it ends every process it
left behind ends with it — the semantics of a container's entrypoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
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
from openmaker.host.spec import HostSpec

# Each host gets its own loopback address, so that `algo-2` reaches `algo-1` by name.
HOST_ADDRESS_BASE = "127.0.1."

# The code runs as root, but only with Docker's default capabilities, less CAP_MKNOD and
# CAP_NET_RAW (no device cgroup or network namespace here would contain them): no mounts, no
# device nodes, no raw sockets on the machine's network — nothing that reaches past the sandbox.
CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_AUDIT_WRITE",
    "CAP_SETFCAP",
)  # fmt: skip

# Mounts one overlay per group of four arguments (lower, upper, work, merged) up to "--",
# then runs the rest. It runs in a private mount namespace, so the host never sees the mounts.
_MOUNT_OVERLAYS_THEN_EXEC = """set -e
while [ "$1" != "--" ]; do
    mount -t overlay overlay -o "lowerdir=$1,upperdir=$2,workdir=$3" "$4"
    shift 4
done
shift
exec "$@"
"""


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: dict[str, str]
    cwd: str
    sandboxed: bool
    note: str
    # bwrap writes the code's PID (as seen from here) into this pipe: (read end, write end).
    info_pipe: tuple[int, int] | None = None


def sandbox_unavailable_reason() -> str | None:
    """Why the bubblewrap sandbox cannot be used here, or None when it can."""
    if os.environ.get("OPENMAKER_SANDBOX") == "none":
        return "OPENMAKER_SANDBOX=none"
    if shutil.which("bwrap") is None:
        return "bwrap (Debian package bubblewrap) is not installed"
    if os.geteuid() != 0:
        return "the copy-on-write root needs root privileges"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    return None


def hosts_file(spec: HostSpec) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"{HOST_ADDRESS_BASE}{i + 1}\t{name}" for i, name in enumerate(spec.hosts)]
    return "\n".join(lines) + "\n"


def plan_launch(spec: HostSpec, image: Image, command: list[str], env: dict[str, str]) -> Launch:
    """How to start the host's code: sandboxed, held to its share of the machine."""
    launch = _plan_launch(spec, image, command, env)
    confinement = confine(spec)
    if not confinement.prefix and not confinement.env:
        return launch
    note = f"{launch.note}; {confinement.note}" if confinement.note else launch.note
    return replace(
        launch,
        argv=[*confinement.prefix, *launch.argv],
        env={**launch.env, **confinement.env},
        note=note,
    )


def _plan_launch(spec: HostSpec, image: Image, command: list[str], env: dict[str, str]) -> Launch:
    reason = sandbox_unavailable_reason()
    if reason is not None:
        return _plain_launch(spec, image, command, env, reason)
    etc_hosts = spec.work_dir / "hosts"
    etc_hosts.write_text(hosts_file(spec))
    # Copy-on-write layers: the root filesystem, then the folders the sandbox would not show
    # otherwise (the Python that runs script mode may live under /tmp or on another disk).
    lowers = ["/", *_unseen_python_folders(spec)]
    layers = [(lower, *_layer_folders(spec, index)) for index, lower in enumerate(lowers)]
    mounts = [str(part) for layer in layers for part in layer]

    info_read, info_write = os.pipe()
    os.set_inheritable(info_write, True)
    binds = [("--bind", str(layers[0][3]), "/")]
    binds += [("--dev", "/dev"), ("--proc", "/proc"), ("--ro-bind", "/sys", "/sys")]
    binds += [("--tmpfs", "/tmp"), ("--tmpfs", "/dev/shm")]
    for hidden in spec.hidden_paths:
        # Under /tmp it is hidden already, and covering it would show its parents there.
        if hidden.exists() and not hidden.is_relative_to("/tmp"):
            binds.append(("--tmpfs", str(hidden)))
    binds += [("--bind", str(merged), lower) for lower, _, _, merged in layers[1:]]
    binds += [("--bind", str(spec.ml_dir), CONTAINER_ROOT)]
    binds += [("--ro-bind", source, target) for source, target in sandbox_binds(spec)]
    binds += [("--ro-bind", str(etc_hosts), "/etc/hosts")]
    checkpoints = checkpoint_dir(spec)
    if checkpoints is not None and not checkpoints.is_relative_to(spec.ml_dir):
        binds.append(("--bind", str(checkpoints), checkpoint_local_path(spec)))
    if image.program_dir is not None:
        binds.append(("--ro-bind", str(image.program_dir), PROGRAM_MOUNT))
    options = [
        ("--unshare-pid",), ("--unshare-uts",), ("--unshare-ipc",),
        ("--hostname", spec.host_name), ("--as-pid-1",), ("--die-with-parent",),
        ("--info-fd", str(info_write)), ("--chdir", _workdir(image)),
    ]  # fmt: skip
    options.append(("--cap-drop", "ALL"))
    options += [("--cap-add", capability) for capability in CAPABILITIES]
    if spec.request.get("EnableNetworkIsolation"):
        options.append(("--unshare-net",))
    bwrap = ["bwrap", *(part for group in [*binds, *options] for part in group)]
    argv = ["unshare", "--mount", "--propagation", "private", "--"]
    argv += ["sh", "-c", _MOUNT_OVERLAYS_THEN_EXEC, "sh", *mounts, "--", *bwrap, "--", *command]
    note = f"sandboxed with bubblewrap as host {spec.host_name}"
    return Launch(argv, env, "/", True, note, info_pipe=(info_read, info_write))


def _layer_folders(spec: HostSpec, index: int) -> tuple[Path, Path, Path]:
    """The upper, work and merged folders of one copy-on-write layer of the host."""
    base = spec.work_dir / "root" / str(index)
    folders = (base / "upper", base / "work", base / "merged")
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    return folders


def _unseen_python_folders(spec: HostSpec) -> list[str]:
    """openmaker's Python folders that the root layer would not show: on another filesystem
    than `/`, or under a folder the sandbox covers (/tmp, openmaker's home)."""
    root_device = os.stat("/").st_dev
    covered = [Path("/tmp"), *spec.hidden_paths]
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
    return Launch(command, env, cwd, False, note)


class Process:
    """The running code of one host."""

    def __init__(self, launch: Launch) -> None:
        self.launch = launch
        pass_fds = (launch.info_pipe[1],) if launch.info_pipe is not None else ()
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
        return self.popen.wait(timeout)


def _read_child_pid(read_fd: int) -> int | None:
    with os.fdopen(read_fd, "rb") as info:
        data = info.read()
    try:
        return int(json.loads(data)["child-pid"])
    except (ValueError, KeyError):
        return None  # bwrap failed before starting the code; its exit status says why
