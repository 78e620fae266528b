"""A training host's share of the machine, as the runtime's limits (openmaker/runtime/limits.py),
and the cgroups of jobs: one folder per openmaker home, one per job, one per host.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from openmaker.runtime import limits as runtime_limits
from openmaker.runtime.limits import (
    CONTROLLERS,
    cgroup_root,
    remove_tree_when_empty,
    remove_when_empty,
)
from openmaker.runtime.spec import Limits
from openmaker.training.host.spec import HostSpec

__all__ = ["cgroup_root", "memory_cgroup_root"]


def host_limits(spec: HostSpec) -> Limits:
    """The host's resources (None: the whole machine) and `OPENMAKER_PIDS_LIMIT`."""
    resources = spec.resources
    if resources is None:
        return Limits(pids=spec.settings.pids_limit, cgroup=host_cgroup(spec))
    return Limits(
        memory=resources.memory,
        pids=spec.settings.pids_limit,
        cpus=resources.cpus,
        gpus=resources.gpus,
        cgroup=host_cgroup(spec),
    )


def host_cgroup(spec: HostSpec) -> tuple[str, ...]:
    """Where the host's cgroups go, below openmaker's own: a sweep never touches another home's
    jobs."""
    return (_home_key(spec.settings.home), spec.job_key or spec.job_name, spec.host_name)


def oom_killed(spec: HostSpec) -> bool:
    """Whether the kernel killed a process of the host for going over its memory limit."""
    return runtime_limits.oom_killed(host_cgroup(spec))


def cgroup_of(spec: HostSpec, controller: str) -> Path | None:
    """The host's cgroup of `controller`, where it has one."""
    return runtime_limits.cgroup_of(host_cgroup(spec), controller)


def release(spec: HostSpec) -> None:
    """Remove the host's cgroups (they must be empty: call once its code has ended)."""
    runtime_limits.release(host_cgroup(spec))


def jobs_with_cgroups(home: Path) -> list[str]:
    """The jobs (of the openmaker home `home`) that have cgroups here."""
    names: set[str] = set()
    for controller in CONTROLLERS:
        folder = _home_cgroups(home, controller)
        if folder is not None and folder.is_dir():
            names.update(job.name for job in folder.iterdir() if job.is_dir())
    return sorted(names)


def remove_job_cgroups(home: Path, job_name: str) -> None:
    """Remove the cgroups a job left (its worker killed); those still in use stay."""
    for controller in CONTROLLERS:
        folder = _home_cgroups(home, controller)
        if folder is None:
            continue
        remove_tree_when_empty(folder / job_name)
        remove_when_empty(folder)  # stays while other jobs' cgroups are in it


def memory_cgroup_root() -> Path | None:
    """Where openmaker makes its hosts' memory cgroups: under its own memory cgroup."""
    return cgroup_root("memory")


def _home_key(home: Path) -> str:
    return hashlib.sha256(str(home).encode()).hexdigest()[:12]


def _home_cgroups(home: Path, controller: str) -> Path | None:
    root = cgroup_root(controller)
    return None if root is None else root / _home_key(home)
