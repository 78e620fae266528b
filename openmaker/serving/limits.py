"""A serving instance's share of the machine as the runtime's limits (openmaker/runtime/limits.py):
its instance type's CPUs, memory and GPUs as placed (serving/placement.py), and
`OPENMAKER_PIDS_LIMIT`, as a training host has them.

Its cgroups go below openmaker's own, in the home's folder (named as training's are, so that
one home's cgroups stay together), then `endpoint:<name>` (keyed apart from a training job of
the same name, as its network is), then the instance.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

from openmaker.runtime import limits as runtime_limits
from openmaker.runtime.limits import CONTROLLERS, cgroup_root, remove_when_empty
from openmaker.runtime.spec import Limits
from openmaker.serving.kind import NETWORK_KEY_PREFIX, network_key
from openmaker.serving.placement import Share
from openmaker.settings import Settings


def instance_limits(settings: Settings, endpoint: str, instance: str, share: Share) -> Limits:
    return Limits(
        memory=share.memory,
        pids=settings.pids_limit,
        cpus=share.cpus,
        gpus=share.gpus,
        cgroup=instance_cgroup(settings.home, endpoint, instance),
    )


def instance_cgroup(home: Path, endpoint: str, instance: str) -> tuple[str, ...]:
    return (_home_key(home), network_key(endpoint), instance)


def oom_killed(home: Path, endpoint: str, instance: str) -> bool:
    return runtime_limits.oom_killed(instance_cgroup(home, endpoint, instance))


def release(home: Path, endpoint: str, instance: str) -> None:
    """Remove the instance's cgroups (its container has ended)."""
    runtime_limits.release(instance_cgroup(home, endpoint, instance))


def endpoints_with_cgroups(home: Path) -> list[str]:
    names: set[str] = set()
    for controller in CONTROLLERS:
        folder = _home_cgroups(home, controller)
        if folder is not None and folder.is_dir():
            names.update(
                child.name.removeprefix(NETWORK_KEY_PREFIX)
                for child in folder.iterdir()
                if child.is_dir() and child.name.startswith(NETWORK_KEY_PREFIX)
            )
    return sorted(names)


def remove_endpoint_cgroups(home: Path, endpoint: str) -> None:
    """Remove the cgroups an endpoint's killed worker left; those still in use stay."""
    for controller in CONTROLLERS:
        folder = _home_cgroups(home, controller)
        if folder is None:
            continue
        mine = folder / network_key(endpoint)
        with contextlib.suppress(OSError):
            for cgroup in [*(i for i in mine.iterdir() if i.is_dir()), mine]:
                remove_when_empty(cgroup)


def _home_key(home: Path) -> str:
    # As training/host/limits.py names a home's folder.
    return hashlib.sha256(str(home).encode()).hexdigest()[:12]


def _home_cgroups(home: Path, controller: str) -> Path | None:
    root = cgroup_root(controller)
    return None if root is None else root / _home_key(home)
