"""Holding one host's code to its share of the machine: CPUs, memory, processes, GPUs — and to
its worker.

The code is started through a chain of programs that each set one thing and `exec` the next,
so every process the code starts inherits it all:
- `setpriv --pdeathsig KILL`: the code dies with the worker that started it, sandbox or not;
- joining a memory cgroup and a pids cgroup (children of the cgroups openmaker itself runs in,
  so that any limit put on openmaker still holds; one cgroup for both under cgroup v2) whose
  limits are the host's memory and `OPENMAKER_PIDS_LIMIT` processes and threads (a fork bomb
  stops there);
- `taskset --cpu-list`: the host's CPUs.
`CUDA_VISIBLE_DEVICES` names the host's GPUs (empty: none), and so does
`NVIDIA_VISIBLE_DEVICES` on a host with GPUs, as on a SageMaker GPU instance. What could not be
applied is said in the note that the job's status message carries.

cgroup v2 lets a cgroup hand a controller to its children only while no process is in it
directly: where openmaker's own cgroup has processes (openmaker's, and any others there), they
move first into a child of it, `openmaker-processes`, which openmaker then takes as its own.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from openmaker.host.spec import HostSpec

# Writes the shell's own PID into each cgroup.procs file named before "--", then runs the rest.
_JOIN_CGROUPS_THEN_EXEC = (
    'set -e; while [ "$1" != "--" ]; do echo $$ > "$1"; shift; done; shift; exec "$@"'
)
CGROUP_FOLDER = "openmaker"
# cgroup v2: the child of openmaker's own cgroup that the processes in it move to.
PROCESSES_FOLDER = "openmaker-processes"
# cpuacct: a hierarchy of its own only under cgroup v1 (v2's one cgroup counts CPU time too).
_CONTROLLERS = ("memory", "pids", "cpuacct")


@dataclass(frozen=True)
class Confinement:
    prefix: list[str]  # put before the command
    env: dict[str, str]
    note: str


def confine(spec: HostSpec) -> Confinement:
    prefix: list[str] = []
    # Full paths: the code's own PATH (the one the chain runs with) may not hold them.
    if setpriv := shutil.which("setpriv"):
        prefix += [setpriv, "--pdeathsig", "KILL", "--"]
    resources = spec.resources
    procs: list[str] = []
    memory_note = ""
    if resources is not None and resources.memory is not None:
        cgroup = _make_cgroup(spec, "memory", {"memory.max": str(resources.memory)})
        if cgroup is None:
            memory_note = "no memory limit (no writable memory cgroup)"
        else:
            procs.append(str(cgroup / "cgroup.procs"))
            memory_note = f"{resources.memory / 1024**3:.3g} GiB memory"
    pids_note = ""
    if (pids := spec.settings.pids_limit) is not None:
        cgroup = _make_cgroup(spec, "pids", {"pids.max": str(pids)})
        if cgroup is None:
            pids_note = "no limit on processes (no writable pids cgroup)"
        else:
            procs.append(str(cgroup / "cgroup.procs"))
            pids_note = f"at most {pids} processes"
    # The CPU time that the host's CPUUtilization metric is read from (host/system_metrics.py).
    if (cpu := _make_cgroup(spec, "cpuacct", {})) is not None:
        procs.append(str(cpu / "cgroup.procs"))
    if procs:
        join = [*dict.fromkeys(procs), "--"]  # one cgroup for both under cgroup v2
        prefix += [shutil.which("sh") or "/bin/sh", "-c", _JOIN_CGROUPS_THEN_EXEC, "sh", *join]
    if resources is None:
        return Confinement(prefix, {}, pids_note)
    notes = [memory_note] if memory_note else []
    if taskset := shutil.which("taskset"):
        cpu_list = ",".join(str(cpu) for cpu in sorted(set(resources.cpus)))
        prefix += [taskset, "--cpu-list", cpu_list]
        notes.append(f"{len(resources.cpus)} CPUs ({cpu_list})")
    else:
        notes.append("any CPU (taskset, from util-linux, is missing)")
    notes += [pids_note] if pids_note else []
    gpus = ",".join(resources.gpus)
    env = {"CUDA_VISIBLE_DEVICES": gpus} | ({"NVIDIA_VISIBLE_DEVICES": gpus} if gpus else {})
    notes.append(f"GPUs {','.join(resources.gpus)}" if resources.gpus else "no GPU")
    return Confinement(prefix, env, ", ".join(notes))


def oom_killed(spec: HostSpec) -> bool:
    """Whether the kernel killed a process of the host for going over its memory limit."""
    cgroup = _cgroup_path(spec, "memory")
    if cgroup is None:
        return False
    for name in ("memory.oom_control", "memory.events"):  # cgroup v1, v2
        with contextlib.suppress(OSError):
            for line in (cgroup / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and int(value) > 0:
                    return True
    return False


def cgroup_of(spec: HostSpec, controller: str) -> Path | None:
    """The host's cgroup of `controller`, where it has one."""
    cgroup = _cgroup_path(spec, controller)
    return cgroup if cgroup is not None and cgroup.is_dir() else None


def release(spec: HostSpec) -> None:
    """Remove the host's cgroups (they must be empty: call once its code has ended)."""
    for controller in _CONTROLLERS:
        cgroup = _cgroup_path(spec, controller)
        if cgroup is not None:
            for folder in (cgroup, cgroup.parent, cgroup.parents[1]):
                with contextlib.suppress(OSError):
                    folder.rmdir()


def jobs_with_cgroups(home: Path) -> list[str]:
    """The jobs (of the openmaker home `home`) that have cgroups here."""
    names: set[str] = set()
    for controller in _CONTROLLERS:
        folder = _home_cgroups(home, controller)
        if folder is not None and folder.is_dir():
            names.update(job.name for job in folder.iterdir() if job.is_dir())
    return sorted(names)


def remove_job_cgroups(home: Path, job_name: str) -> None:
    """Remove the cgroups a job left (its worker killed); those still in use stay."""
    for controller in _CONTROLLERS:
        folder = _home_cgroups(home, controller)
        if folder is None:
            continue
        job = folder / job_name
        with contextlib.suppress(OSError):
            for cgroup in [*(host for host in job.iterdir() if host.is_dir()), job, folder]:
                _remove_when_empty(cgroup)


def _remove_when_empty(cgroup: Path) -> None:
    """rmdir a cgroup that no process is in; the kernel refuses it (EBUSY) for a moment after
    its last process was killed, until that process is gone for good."""
    for _ in range(40):
        try:
            cgroup.rmdir()
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or _has_processes(cgroup):
                return
        time.sleep(0.05)


def _has_processes(cgroup: Path) -> bool:
    try:
        return bool((cgroup / "cgroup.procs").read_text().strip())
    except OSError:
        return False


def memory_cgroup_root() -> Path | None:
    """Where openmaker makes its hosts' memory cgroups: under its own memory cgroup."""
    return cgroup_root("memory")


def cgroup_root(controller: str) -> Path | None:
    """Where openmaker makes its hosts' cgroups of `controller`: under its own such cgroup."""
    own = _own_cgroup(controller)
    return None if own is None else own / CGROUP_FOLDER


def _home_cgroups(home: Path, controller: str) -> Path | None:
    """One folder per openmaker home: a sweep never touches another home's jobs."""
    root = cgroup_root(controller)
    key = hashlib.sha256(str(home).encode()).hexdigest()[:12]
    return None if root is None else root / key


def _cgroup_path(spec: HostSpec, controller: str) -> Path | None:
    folder = _home_cgroups(spec.settings.home, controller)
    return None if folder is None else folder / spec.job_name / spec.host_name


def _make_cgroup(spec: HostSpec, controller: str, limits: dict[str, str]) -> Path | None:
    cgroup = _cgroup_path(spec, controller)
    if cgroup is None:
        return None
    try:
        # cgroup v2 (asked of openmaker's own cgroup: the folders below may not exist yet)
        if (cgroup.parents[3] / "cgroup.subtree_control").exists():
            _hand_down(cgroup.parents[3], controller)
            for parent in (cgroup.parents[2], cgroup.parents[1], cgroup.parent):
                parent.mkdir(exist_ok=True)
                _hand_down(parent, controller)
            cgroup.mkdir(exist_ok=True)
            for name, value in limits.items():
                (cgroup / name).write_text(value)
            if controller == "memory":
                with contextlib.suppress(OSError):
                    (cgroup / "memory.swap.max").write_text("0")
        else:
            cgroup.mkdir(parents=True, exist_ok=True)  # v1: children inherit nothing to set
            for name, value in limits.items():
                (cgroup / _V1_NAMES.get(name, name)).write_text(value)
            if controller == "memory":
                with contextlib.suppress(OSError):  # only where swap accounting is on
                    (cgroup / "memory.memsw.limit_in_bytes").write_text(limits["memory.max"])
    except OSError:
        return None
    return cgroup


def _hand_down(cgroup: Path, controller: str) -> None:
    """cgroup v2: let `cgroup`'s children have `controller`. The kernel refuses (EBUSY) while
    processes are in `cgroup` itself: they move to its `openmaker-processes` child first."""
    control = cgroup / "cgroup.subtree_control"
    if controller in control.read_text().split():
        return
    try:
        control.write_text(f"+{controller}")
        return
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
    leaf = cgroup / PROCESSES_FOLDER
    leaf.mkdir(exist_ok=True)
    for _ in range(10):  # processes may start while the others move
        pids = (cgroup / "cgroup.procs").read_text().split()
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # ended meanwhile
                (leaf / "cgroup.procs").write_text(pid)
    control.write_text(f"+{controller}")


# cgroup v1 names of the v2 files.
_V1_NAMES = {"memory.max": "memory.limit_in_bytes"}


def _own_cgroup(controller: str) -> Path | None:
    """The folder of the cgroup of `controller` this process is in (cgroup v1 or v2)."""
    try:
        memberships = Path("/proc/self/cgroup").read_text().splitlines()
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    v1_mount = v2_mount = None
    for line in mounts:
        fields = line.split()
        fstype = fields[fields.index("-") + 1]
        if fstype == "cgroup" and controller in fields[-1].split(","):
            v1_mount = fields[4]
        elif fstype == "cgroup2":
            v2_mount = fields[4]
    for line in memberships:
        _, controllers, path = line.split(":", 2)
        if v1_mount and controller in controllers.split(","):
            return Path(v1_mount + path)
    for line in memberships:
        _, controllers, path = line.split(":", 2)
        if v2_mount and controllers == "":
            folder = Path(v2_mount + path)
            if folder.name == PROCESSES_FOLDER:  # moved there by _hand_down
                folder = folder.parent
            controllers_file = folder / "cgroup.controllers"
            with contextlib.suppress(OSError):
                if controller in controllers_file.read_text().split():
                    return folder
    return None
