"""A serving instance's share of the machine as the runtime's limits (openmaker/runtime/limits.py):
its instance type's CPUs, memory and GPUs as placed (serving/placement.py), and
`OPENMAKER_PIDS_LIMIT`, as a training host has them.

Its cgroups go below openmaker's own, in the home's folder (named as training's are, so that
one home's cgroups stay together), then its owner's local key (`endpoint:<name>`, or a transform
job's: ResourceKind.local_key, apart from a training job of the same name), then the instance.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from openmaker.runtime import limits as runtime_limits
from openmaker.runtime.limits import CONTROLLERS, cgroup_root, remove_tree_when_empty
from openmaker.runtime.spec import Limits
from openmaker.serving.placement import Share
from openmaker.settings import Settings


def instance_limits(settings: Settings, owner: str, instance: str, share: Share) -> Limits:
    """The limits of an instance of `owner` (the local key of its endpoint or transform job)."""
    return Limits(
        memory=share.memory,
        pids=settings.pids_limit,
        cpus=share.cpus,
        gpus=share.gpus,
        cgroup=instance_cgroup(settings.home, owner, instance),
    )


def instance_cgroup(home: Path, owner: str, instance: str) -> tuple[str, ...]:
    return (_home_key(home), owner, instance)


def oom_killed(home: Path, owner: str, instance: str) -> bool:
    return runtime_limits.oom_killed(instance_cgroup(home, owner, instance))


def release(home: Path, owner: str, instance: str) -> None:
    """Remove the instance's cgroups (its container has ended)."""
    runtime_limits.release(instance_cgroup(home, owner, instance))


def owners_with_cgroups(home: Path) -> list[str]:
    """The local keys of the endpoints and jobs (of every kind) that have cgroups here."""
    keys: set[str] = set()
    for controller in CONTROLLERS:
        folder = _home_cgroups(home, controller)
        if folder is not None and folder.is_dir():
            keys.update(child.name for child in folder.iterdir() if child.is_dir())
    return sorted(keys)


def remove_owner_cgroups(home: Path, owner: str) -> None:
    """Remove the cgroups a killed worker left for `owner` (a local key); those in use stay."""
    for controller in CONTROLLERS:
        folder = _home_cgroups(home, controller)
        if folder is None:
            continue
        remove_tree_when_empty(folder / owner)


def _home_key(home: Path) -> str:
    # As training/host/limits.py names a home's folder.
    return hashlib.sha256(str(home).encode()).hexdigest()[:12]


def _home_cgroups(home: Path, controller: str) -> Path | None:
    root = cgroup_root(controller)
    return None if root is None else root / _home_key(home)
