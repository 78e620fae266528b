"""Holding one host's code to its share of the machine: CPUs, memory, GPUs — and to its worker.

The code is started through a chain of programs that each set one thing and `exec` the next,
so every process the code starts inherits it all:
- `setpriv --pdeathsig KILL`: the code dies with the worker that started it, sandbox or not;
- joining a memory cgroup (a child of the cgroup openmaker itself runs in, so that any limit
  put on openmaker still holds) whose limit is the host's memory;
- `taskset --cpu-list`: the host's CPUs.
`CUDA_VISIBLE_DEVICES` names the host's GPUs. What could not be applied is said in the note
that the job's status message carries.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from openmaker.host.spec import HostSpec

# Writes the shell's own PID into the cgroup named by $1 (when not empty), then runs the rest.
_JOIN_CGROUP_THEN_EXEC = 'set -e; if [ -n "$1" ]; then echo $$ > "$1"; fi; shift; exec "$@"'
CGROUP_FOLDER = "openmaker"


@dataclass(frozen=True)
class Confinement:
    prefix: list[str]  # put before the command
    env: dict[str, str]
    note: str


def confine(spec: HostSpec) -> Confinement:
    prefix: list[str] = []
    notes: list[str] = []
    # Full paths: the code's own PATH (the one the chain runs with) may not hold them.
    if setpriv := shutil.which("setpriv"):
        prefix += [setpriv, "--pdeathsig", "KILL", "--"]
    resources = spec.resources
    if resources is None:
        return Confinement(prefix, {}, "")
    procs = ""
    if resources.memory is not None:
        cgroup = _make_cgroup(spec, resources.memory)
        if cgroup is None:
            notes.append("no memory limit (no writable memory cgroup)")
        else:
            procs = str(cgroup / "cgroup.procs")
            notes.append(f"{resources.memory / 1024**3:.3g} GiB memory")
    prefix += [shutil.which("sh") or "/bin/sh", "-c", _JOIN_CGROUP_THEN_EXEC, "sh", procs]
    if taskset := shutil.which("taskset"):
        cpu_list = ",".join(str(cpu) for cpu in sorted(set(resources.cpus)))
        prefix += [taskset, "--cpu-list", cpu_list]
        notes.append(f"{len(resources.cpus)} CPUs ({cpu_list})")
    else:
        notes.append("any CPU (taskset, from util-linux, is missing)")
    env = {"CUDA_VISIBLE_DEVICES": ",".join(resources.gpus)}
    notes.append(f"GPUs {','.join(resources.gpus)}" if resources.gpus else "no GPU")
    return Confinement(prefix, env, ", ".join(notes))


def oom_killed(spec: HostSpec) -> bool:
    """Whether the kernel killed a process of the host for going over its memory limit."""
    cgroup = _cgroup_path(spec)
    if cgroup is None:
        return False
    for name in ("memory.oom_control", "memory.events"):  # cgroup v1, v2
        with contextlib.suppress(OSError):
            for line in (cgroup / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and int(value) > 0:
                    return True
    return False


def release(spec: HostSpec) -> None:
    """Remove the host's cgroup (it must be empty: call once its code has ended)."""
    cgroup = _cgroup_path(spec)
    if cgroup is not None:
        for folder in (cgroup, cgroup.parent, cgroup.parents[1]):
            with contextlib.suppress(OSError):
                folder.rmdir()


def jobs_with_cgroups(home: Path) -> list[str]:
    """The jobs (of the openmaker home `home`) that have memory cgroups here."""
    folder = _home_cgroups(home)
    if folder is None or not folder.is_dir():
        return []
    return [job.name for job in folder.iterdir() if job.is_dir()]


def remove_job_cgroups(home: Path, job_name: str) -> None:
    """Remove the cgroups a job left (its worker killed); those still in use stay."""
    folder = _home_cgroups(home)
    if folder is None:
        return
    job = folder / job_name
    with contextlib.suppress(OSError):
        for cgroup in [*(host for host in job.iterdir() if host.is_dir()), job, folder]:
            with contextlib.suppress(OSError):
                cgroup.rmdir()


def memory_cgroup_root() -> Path | None:
    """Where openmaker makes its hosts' memory cgroups: under its own memory cgroup."""
    own = _own_memory_cgroup()
    return None if own is None else own / CGROUP_FOLDER


def _home_cgroups(home: Path) -> Path | None:
    """One folder per openmaker home: a sweep never touches another home's jobs."""
    root = memory_cgroup_root()
    key = hashlib.sha256(str(home).encode()).hexdigest()[:12]
    return None if root is None else root / key


def _cgroup_path(spec: HostSpec) -> Path | None:
    folder = _home_cgroups(spec.settings.home)
    return None if folder is None else folder / spec.job_name / spec.host_name


def _make_cgroup(spec: HostSpec, limit: int) -> Path | None:
    cgroup = _cgroup_path(spec)
    if cgroup is None:
        return None
    try:
        if (cgroup.parents[2] / "cgroup.subtree_control").exists():  # cgroup v2
            for parent in (cgroup.parents[2], cgroup.parents[1], cgroup.parent):
                parent.mkdir(exist_ok=True)
                (parent / "cgroup.subtree_control").write_text("+memory")
            cgroup.mkdir(exist_ok=True)
            (cgroup / "memory.max").write_text(str(limit))
            with contextlib.suppress(OSError):
                (cgroup / "memory.swap.max").write_text("0")
        else:
            cgroup.mkdir(parents=True, exist_ok=True)  # v1: children inherit nothing to set
            (cgroup / "memory.limit_in_bytes").write_text(str(limit))
            with contextlib.suppress(OSError):  # only where swap accounting is on
                (cgroup / "memory.memsw.limit_in_bytes").write_text(str(limit))
    except OSError:
        return None
    return cgroup


def _own_memory_cgroup() -> Path | None:
    """The folder of the memory cgroup this process is in (v1 memory controller, or v2)."""
    try:
        memberships = Path("/proc/self/cgroup").read_text().splitlines()
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    v1_mount = v2_mount = None
    for line in mounts:
        fields = line.split()
        fstype = fields[fields.index("-") + 1]
        if fstype == "cgroup" and "memory" in fields[-1].split(","):
            v1_mount = fields[4]
        elif fstype == "cgroup2":
            v2_mount = fields[4]
    for line in memberships:
        _, controllers, path = line.split(":", 2)
        if v1_mount and "memory" in controllers.split(","):
            return Path(v1_mount + path)
    for line in memberships:
        _, controllers, path = line.split(":", 2)
        if v2_mount and controllers == "":
            folder = Path(v2_mount + path)
            controllers_file = folder / "cgroup.controllers"
            with contextlib.suppress(OSError):
                if "memory" in controllers_file.read_text().split():
                    return folder
    return None
