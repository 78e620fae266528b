"""Noticing jobs whose worker is gone, and acting on it: restart or end them, start the queue.

A worker can vanish without a word: killed (`kill -9`, the OOM killer), its machine restarted,
or — before it runs — the process starting it killed. Every openmaker process that opens the
job store (any CLI command, the server) sweeps once; describing a job checks that job. A job
whose worker is gone is restarted under its RetryStrategy or ends with a FailureReason saying
what happened; its leftovers (volumes, host folders, cgroups, bridges) are removed; then waiting
jobs start.
"""

from __future__ import annotations

import shutil

from sqlalchemy import Select, select

from openmaker.jobs import queue
from openmaker.jobs.db import JobRecord, sessions, writer_sessions
from openmaker.jobs.executor import Executor
from openmaker.jobs.kinds import KINDS
from openmaker.jobs.resource import ResourceKind
from openmaker.settings import Settings
from openmaker.training.host.site import (
    jobs_with_cgroups,
    jobs_with_networks,
    remove_job_cgroups,
    remove_network,
    unmount_under,
)


def sweep(settings: Settings, executor: Executor) -> None:
    """Act on every job whose worker is gone, then start the jobs that wait and fit."""
    executor.reap()
    # Read first: the write lock (which workers recording their logs wait for) only when a
    # job needs it.
    with sessions(settings)() as session:
        lost = any(
            _lost(job, executor) for kind in KINDS for job in session.scalars(_running(kind))
        )
    if lost:
        orphaned: list[str] = []
        with writer_sessions(settings)() as session:
            for kind in KINDS:
                active = session.scalars(_running(kind)).all()
                orphaned += [job.name for job in active if _handle_if_lost(kind, job, executor)]
            session.commit()
        for name in orphaned:
            remove_host_folders(settings, name)
    _remove_leftover_cgroups(settings)
    _remove_leftover_networks(settings)
    queue.start_ready(settings, executor)


def _running(kind: ResourceKind) -> Select[JobRecord]:
    """The jobs of `kind` that a process runs or starts."""
    table = kind.table()
    return select(table).where(table.status.in_(kind.active), table.worker_pid.is_not(None))


def _remove_leftover_cgroups(settings: Settings) -> None:
    """Memory cgroups of jobs that no worker runs (a killed worker's, once its code died)."""
    names = jobs_with_cgroups(settings.home)
    for name in set(names) - _with_workers(settings, names):
        remove_job_cgroups(settings.home, name)


def _remove_leftover_networks(settings: Settings) -> None:
    """Bridges and their rules of jobs that no worker runs (a killed worker's)."""
    names = jobs_with_networks(settings.home)
    for name in set(names) - _with_workers(settings, names):
        remove_network(settings.home, name)


def _with_workers(settings: Settings, names: list[str]) -> set[str]:
    """Those of the jobs `names` that a worker runs."""
    if not names:
        return set()
    running: set[str] = set()
    with sessions(settings)() as session:
        for kind in KINDS:
            table = kind.table()
            rows = session.execute(
                select(table.name, table.status, table.worker_pid).where(table.name.in_(names))
            ).all()
            running |= {
                name for name, status, pid in rows if status not in kind.ended and pid is not None
            }
    return running


def check(settings: Settings, executor: Executor, kind: ResourceKind, name: str) -> None:
    """The sweep's work for one job, when it needs it (its worker gone, or it waits)."""
    with sessions(settings)() as session:
        job = session.get(kind.table(), name)
        if job is None or job.status in kind.ended:
            return
        if not kind.lifecycle.needs_worker(job) and not _lost(job, executor):
            return
    sweep(settings, executor)


def _lost(job: JobRecord, executor: Executor) -> bool:
    pid = job.worker_pid
    return pid is not None and executor.lost(pid, job.worker_started)


def _handle_if_lost(kind: ResourceKind, job: JobRecord, executor: Executor) -> bool:
    if not _lost(job, executor):
        return False
    if job.worker_ready:
        what = (
            f"the openmaker worker running the job (process {job.worker_pid}) ended without "
            "finishing it"
        )
    else:  # the process starting it, or its worker before it took the job over
        what = (
            f"the openmaker process starting the job (process {job.worker_pid}) ended without "
            "finishing it"
        )
    kind.lifecycle.lost(job, what)
    return True


def remove_host_folders(settings: Settings, job_name: str) -> None:
    """Like a SageMaker instance's disk, a host's folder (input data included) goes away with
    the job; OPENMAKER_KEEP_JOB_FILES=1 keeps it for a post-mortem. (A restarted job's new
    worker clears what is left of them before it starts, whatever the setting.) Their volumes
    are unmounted first, whatever the setting: a lost worker's guard may not have yet."""
    unmount_under(settings.jobs_dir / job_name)
    if settings.keep_job_files:
        return
    for folder in (settings.jobs_dir / job_name).glob("algo-*"):
        shutil.rmtree(folder, ignore_errors=True)
