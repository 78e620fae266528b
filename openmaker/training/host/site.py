"""What the hosts of one job share on this machine, and what a job leaves on it.

Job-level, for the worker and recovery: the job's bridge (its hosts' namespaces hang on it),
and the sweep of a job's folder, volumes, cgroups and bridge once its hosts are gone (or their
worker was lost). Everything of one host while it lives is its own (training_host.py).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from openmaker.runtime.network import (
    JobNetwork,
    create,
    jobs_with_networks,
    remove_orphan_tables,
    shared,
)
from openmaker.runtime.network import remove as remove_network
from openmaker.settings import Settings
from openmaker.training.host.limits import jobs_with_cgroups, remove_job_cgroups
from openmaker.training.host.volume import unmount_under

__all__ = [
    "JobNetwork",
    "clear_job",
    "job_network",
    "jobs_with_cgroups",
    "jobs_with_networks",
    "remove_job_cgroups",
    "remove_network",
    "remove_stale_hosts",
    "unmount_under",
]


class Kind(Protocol):
    """A kind of job, as far as its stale keys go (openmaker/jobs/resource.py's ResourceKind)."""

    def stale(self, keys: Iterable[str], running: Callable[[list[str]], set[str]]) -> list[str]: ...


def remove_stale_hosts(
    kind: Kind, settings: Settings, running: Callable[[list[str]], set[str]]
) -> None:
    """The memory cgroups (a killed worker's, once its code died) and bridges of the jobs of
    `kind` that no worker runs (`running(names)`); other kinds' keys are left to their sweeps.
    Then any table of openmaker's whose bridge is gone, whoever left it."""
    for key in kind.stale(jobs_with_cgroups(settings.home), running):
        remove_job_cgroups(settings.home, key)
    for key in kind.stale(jobs_with_networks(settings.home), running):
        remove_network(settings.home, key)
    remove_orphan_tables()


def job_network(
    settings: Settings, name: str, hosts: list[str], code_env: Mapping[str, str], isolated: bool
) -> JobNetwork:
    """The job's bridge (network.py); none for an isolated job (its hosts have loopback
    alone) or where the sandbox will not run (its hosts share the machine's network)."""
    # Here: the recovery sweep (every command's) needs this module, not the container's.
    from openmaker.training.host.container import sandbox_unavailable_reason

    if isolated:
        return shared(hosts, "network isolation")
    if (reason := sandbox_unavailable_reason(settings)) is not None:
        return shared(hosts, reason)
    return create(settings, name, hosts, code_env)


def clear_job(settings: Settings, job_name: str, keep_files: bool = False) -> None:
    """Like a SageMaker instance's disk, a host's folder (input data included) goes away with
    the job; `keep_files` keeps it for a post-mortem. Volumes (an earlier attempt's) are
    unmounted and the job's bridge removed whatever it says."""
    unmount_under(settings.jobs_dir / job_name)
    remove_network(settings.home, job_name)
    if keep_files:
        return
    for folder in (settings.jobs_dir / job_name).glob("algo-*"):
        shutil.rmtree(folder, ignore_errors=True)
