"""Holding one container to its share of the machine: CPUs, memory, processes, GPUs — and to
whoever started it.

The container is started through a chain of programs that each set one thing and `exec` the
next, so every process it starts inherits it all:
- `setpriv --pdeathsig KILL`: the container dies with the process that started it, sandbox or
  not;
- joining a memory cgroup and a pids cgroup (children of the cgroups openmaker itself runs in,
  so that any limit put on openmaker still holds; one cgroup for both under cgroup v2) whose
  limits are the container's memory and processes and threads (a fork bomb stops there);
- `taskset --cpu-list`: the container's CPUs.
`CUDA_VISIBLE_DEVICES` names the container's GPUs (empty: none), and so does
`NVIDIA_VISIBLE_DEVICES` where it has GPUs, as on a SageMaker GPU instance. What could not be
applied is said in the note of its `Confinement`.

cgroup v2 lets a cgroup hand a controller to its children only while no process is in it
directly: where openmaker's own cgroup has processes (openmaker's, and any others there), they
move first into a child of it, `openmaker-processes`, which openmaker then takes as its own.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from openmaker.runtime.spec import Limits

# Writes the shell's own PID into each cgroup.procs file named before "--", then runs the rest.
_JOIN_CGROUPS_THEN_EXEC = (
    'set -e; while [ "$1" != "--" ]; do echo $$ > "$1"; shift; done; shift; exec "$@"'
)
CGROUP_FOLDER = "openmaker"
# cgroup v2: the child of openmaker's own cgroup that the processes in it move to.
PROCESSES_FOLDER = "openmaker-processes"
# cpuacct: a hierarchy of its own only under cgroup v1 (v2's one cgroup counts CPU time too).
CONTROLLERS = ("memory", "pids", "cpuacct")


@dataclass(frozen=True)
class Confinement:
    prefix: list[str]  # put before the command
    env: dict[str, str]
    note: str


def confine(limits: Limits) -> Confinement:
    prefix: list[str] = []
    # Full paths: the code's own PATH (the one the chain runs with) may not hold them.
    if setpriv := shutil.which("setpriv"):
        prefix += [setpriv, "--pdeathsig", "KILL", "--"]
    procs: list[str] = []
    memory_note = ""
    if limits.memory is not None:
        cgroup = make_cgroup(limits.cgroup, "memory", {"memory.max": str(limits.memory)})
        if cgroup is None:
            memory_note = "no memory limit (no writable memory cgroup)"
        else:
            procs.append(str(cgroup / "cgroup.procs"))
            memory_note = f"{limits.memory / 1024**3:.3g} GiB memory"
    pids_note = ""
    if (pids := limits.pids) is not None:
        cgroup = make_cgroup(limits.cgroup, "pids", {"pids.max": str(pids)})
        if cgroup is None:
            pids_note = "no limit on processes (no writable pids cgroup)"
        else:
            procs.append(str(cgroup / "cgroup.procs"))
            pids_note = f"at most {pids} processes"
    # The CPU time that a CPUUtilization metric is read from.
    if (cpu := make_cgroup(limits.cgroup, "cpuacct", {})) is not None:
        procs.append(str(cpu / "cgroup.procs"))
    if procs:
        join = [*dict.fromkeys(procs), "--"]  # one cgroup for both under cgroup v2
        prefix += [shutil.which("sh") or "/bin/sh", "-c", _JOIN_CGROUPS_THEN_EXEC, "sh", *join]
    notes = [memory_note] if memory_note else []
    if limits.cpus is not None:
        if taskset := shutil.which("taskset"):
            cpu_list = ",".join(str(cpu) for cpu in sorted(set(limits.cpus)))
            prefix += [taskset, "--cpu-list", cpu_list]
            notes.append(f"{len(limits.cpus)} CPUs ({cpu_list})")
        else:
            notes.append("any CPU (taskset, from util-linux, is missing)")
    notes += [pids_note] if pids_note else []
    env: dict[str, str] = {}
    if limits.gpus is not None:
        gpus = ",".join(limits.gpus)
        shown = gpus if limits.visible_gpus is None else ",".join(limits.visible_gpus)
        env = {"CUDA_VISIBLE_DEVICES": shown} | ({"NVIDIA_VISIBLE_DEVICES": shown} if gpus else {})
        notes.append(f"GPUs {gpus}" if limits.gpus else "no GPU")
    return Confinement(prefix, env, ", ".join(notes))


def oom_killed(cgroup: tuple[str, ...]) -> bool:
    """Whether the kernel killed a process of the container for going over its memory limit."""
    folder = cgroup_path(cgroup, "memory")
    if folder is None:
        return False
    for name in ("memory.oom_control", "memory.events"):  # cgroup v1, v2
        with contextlib.suppress(OSError):
            for line in (folder / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and int(value) > 0:
                    return True
    return False


def cgroup_of(cgroup: tuple[str, ...], controller: str) -> Path | None:
    """The container's cgroup of `controller`, where it has one."""
    folder = cgroup_path(cgroup, controller)
    return folder if folder is not None and folder.is_dir() else None


def release(cgroup: tuple[str, ...]) -> None:
    """Remove the container's cgroups and the folders above them that are left empty (they
    must hold no process: call once it has ended)."""
    for controller in CONTROLLERS:
        folder = cgroup_path(cgroup, controller)
        if folder is not None:
            for level in (folder, *list(folder.parents)[: len(cgroup) - 1]):
                with contextlib.suppress(OSError):
                    level.rmdir()


def remove_when_empty(cgroup: Path) -> None:
    """rmdir a cgroup that no process is in; the kernel refuses it (EBUSY) for a moment after
    its last process was killed, until that process is gone for good. One with cgroups below it
    stays at once: that refusal lasts (remove_tree_when_empty takes them first)."""
    for _ in range(40):
        try:
            cgroup.rmdir()
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or _has_processes(cgroup) or _children(cgroup):
                return
        time.sleep(0.05)


def remove_tree_when_empty(cgroup: Path) -> None:
    """`remove_when_empty` for `cgroup` and every cgroup below it, the deepest first (an
    instance's containers of a pipeline, say)."""
    for child in _children(cgroup):
        remove_tree_when_empty(child)
    remove_when_empty(cgroup)


def _children(cgroup: Path) -> list[Path]:
    try:
        with os.scandir(cgroup) as entries:
            return [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _has_processes(cgroup: Path) -> bool:
    try:
        return bool((cgroup / "cgroup.procs").read_text().strip())
    except OSError:
        return False


def cgroup_root(controller: str) -> Path | None:
    """Where openmaker makes its containers' cgroups of `controller`: under its own such cgroup."""
    own = _own_cgroup(controller)
    return None if own is None else own / CGROUP_FOLDER


def cgroup_path(cgroup: tuple[str, ...], controller: str) -> Path | None:
    root = cgroup_root(controller)
    return None if root is None or not cgroup else root.joinpath(*cgroup)


def make_cgroup(cgroup: tuple[str, ...], controller: str, limits: dict[str, str]) -> Path | None:
    folder = cgroup_path(cgroup, controller)
    if folder is None:
        return None
    # openmaker's own cgroup, then each folder down to the container's.
    own = folder.parents[len(cgroup)]
    below = [*reversed(folder.parents[: len(cgroup)]), folder]
    try:
        # cgroup v2 (asked of openmaker's own cgroup: the folders below may not exist yet)
        if (own / "cgroup.subtree_control").exists():
            _hand_down(own, controller)
            for parent in below[:-1]:
                parent.mkdir(exist_ok=True)
                _hand_down(parent, controller)
            folder.mkdir(exist_ok=True)
            for name, value in limits.items():
                (folder / name).write_text(value)
            if controller == "memory":
                with contextlib.suppress(OSError):
                    (folder / "memory.swap.max").write_text("0")
        else:
            folder.mkdir(parents=True, exist_ok=True)  # v1: children inherit nothing to set
            for name, value in limits.items():
                (folder / _V1_NAMES.get(name, name)).write_text(value)
            if controller == "memory":
                with contextlib.suppress(OSError):  # only where swap accounting is on
                    (folder / "memory.memsw.limit_in_bytes").write_text(limits["memory.max"])
    except OSError:
        return None
    return folder


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


# What `_own_cgroup` found, by (process, controller): a job's worker asks a dozen times, and
# reads the whole mount table each time. Where a process is does not change: `_hand_down`
# moves it to a child that counts as its cgroup still. "Not found" is asked again.
_own_cgroups: dict[tuple[int, str], Path] = {}


def _own_cgroup(controller: str) -> Path | None:
    """The folder of the cgroup of `controller` this process is in (cgroup v1 or v2)."""
    key = (os.getpid(), controller)
    if key not in _own_cgroups:
        found = _find_own_cgroup(controller)
        if found is None:
            return None
        _own_cgroups[key] = found
    return _own_cgroups[key]


def _find_own_cgroup(controller: str) -> Path | None:
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
