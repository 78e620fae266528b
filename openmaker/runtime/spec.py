"""One container, as plain data: what it runs, what it sees, what it may use.

Nothing here knows what the container is for (training, serving…): whoever starts one says
every folder it binds, every variable it sets, and where its state lives.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path

# Docker's default capabilities, less CAP_MKNOD and CAP_NET_RAW (no device cgroup would contain
# the one; the other would reach the machine's network where the container shares it): no
# mounts, no device nodes, no raw sockets — nothing that reaches past the sandbox.
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_AUDIT_WRITE",
    "CAP_SETFCAP",
)  # fmt: skip


@dataclass(frozen=True)
class Bind:
    """A folder or file of the machine shown inside the container."""

    source: str
    target: str
    read_only: bool = True
    # Shown through an overlay mounted by descriptor, so that the container's mountinfo does
    # not name `source` (a bind's options would).
    unnamed: bool = False


@dataclass(frozen=True)
class Limits:
    """The container's share of the machine; None: not limited."""

    memory: int | None = None  # bytes, swap excluded
    pids: int | None = None  # processes and threads
    cpus: tuple[int, ...] | None = None  # the CPUs it may run on
    gpus: tuple[str, ...] | None = None  # CUDA_VISIBLE_DEVICES; () none
    # How the container's CUDA numbers those GPUs when it sees their device nodes alone (an
    # image's container: 0…n-1, see runtime/images/gpus.py); None: as the machine does.
    visible_gpus: tuple[str, ...] | None = None
    # Where its cgroups go, below openmaker's own cgroup (empty: no cgroup, no CPU accounting).
    cgroup: tuple[str, ...] = ()


@dataclass(frozen=True)
class User:
    """Who the container's first process runs as (numbers, as its own files name them)."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()


@dataclass(frozen=True)
class ContainerSpec:
    argv: list[str]
    env: dict[str, str]
    # The container's own folder on the machine: its copy-on-write layers (`root/`), the
    # files it is shown (`hosts`, `views/`). Mounts under it stay in the container's mount
    # namespace; it is never shown to the container.
    state_dir: Path
    # False: a plain process of the machine (no namespace, no bind: argv runs in `workdir`).
    sandboxed: bool = True
    # Copy-on-write layers: the root filesystem first (the machine's "/"), then further folders
    # of the machine shown copy-on-write at their own path.
    layers: tuple[str, ...] = ("/",)
    binds: tuple[Bind, ...] = ()
    # /tmp: this folder of the machine, else a tmpfs.
    tmp: Path | None = None
    # /dev/shm's size in bytes (None: the kernel's default).
    shm_size: int | None = None
    workdir: str = "/"
    hostname: str | None = None
    # The content of /etc/hosts; None: the root filesystem's own.
    etc_hosts: str | None = None
    # A network namespace to enter (a descriptor, kept open by the caller until the container
    # ends); None with `isolate_network`: loopback alone; None without: the machine's network.
    netns_fd: int | None = None
    isolate_network: bool = False
    capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES
    # Shown empty (private files of the machine), and not shown at all (openmaker's own folders).
    hidden: tuple[Path, ...] = ()
    removed: tuple[Path, ...] = ()
    # Other mounts under this folder are detached from the container's mount namespace (other
    # containers' volumes must go away when those end, not when this one does).
    detach_mounts_under: Path | None = None
    limits: Limits = field(default_factory=Limits)
    # Sandboxed: the user it runs as (an image's USER); None: root, with `capabilities`. Any
    # other user has no capabilities at all, as under Docker.
    user: User | None = None
    # Device nodes of the machine shown at their own path (GPUs: runtime/images/gpus.py).
    devices: tuple[str, ...] = ()
    # What `Container.stop` sends first (an image's STOPSIGNAL, as Docker does).
    stop_signal: int = signal.SIGTERM
    # Unsandboxed: the mark every process of the container carries in its environment, by
    # which what it leaves behind is ended.
    tag: str = ""
