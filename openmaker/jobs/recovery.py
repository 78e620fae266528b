"""Noticing jobs whose worker is gone, and acting on it: restart or end them, start the queue.

A worker can vanish without a word: killed (`kill -9`, the OOM killer), its machine restarted,
or — before it runs — the process starting it killed. Every openmaker process that opens the
job store (any CLI command, the server) sweeps once; describing a job checks that job. A job
whose worker is gone is restarted under its RetryStrategy or ends with a FailureReason saying
what happened; its leftovers (each kind says which: volumes, host folders, cgroups, bridges) are
removed; then waiting jobs start.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Protocol

from sqlalchemy import Select, select

from openmaker.jobs import queue
from openmaker.jobs.db import JobRecord, sessions, writer_sessions
from openmaker.jobs.executor import Executor
from openmaker.jobs.resource import ResourceKind
from openmaker.settings import Settings


class Lock(Protocol):
    def acquire(self, blocking: bool = ...) -> bool: ...

    def release(self) -> None: ...


def sweep(settings: Settings, executor: Executor, kinds: Sequence[ResourceKind]) -> None:
    """Act on every job (of `kinds`) whose worker is gone, then start the jobs that wait and
    fit."""
    executor.reap()
    # Read first: the write lock (which workers recording their logs wait for) only when a
    # job needs it.
    with sessions(settings)() as session:
        lost = any(
            _lost(job, executor) for kind in kinds for job in session.scalars(_running(kind))
        )
    if lost:
        orphaned: list[tuple[ResourceKind, str]] = []
        with writer_sessions(settings)() as session:
            for kind in kinds:
                active = session.scalars(_running(kind)).all()
                orphaned += [
                    (kind, job.name) for job in active if _handle_if_lost(kind, job, executor)
                ]
            session.commit()
        for kind, name in orphaned:
            kind.leftovers.remove_lost(settings, name)
    for kind in kinds:
        # Each kind's leftovers are keyed apart (ResourceKind.local_key): a job of another kind
        # of the same name keeps none of them.
        kind.leftovers.remove_stale(settings, partial(_with_workers, settings, kind))
    queue.start_ready(settings, executor, kinds)


def _running(kind: ResourceKind) -> Select[JobRecord]:
    """The jobs of `kind` that a process runs or starts."""
    table = kind.table()
    return select(table).where(table.status.in_(kind.active), table.worker.is_not(None))


def _with_workers(settings: Settings, kind: ResourceKind, names: list[str]) -> set[str]:
    """Those of the jobs `names` (of `kind`) that a worker runs."""
    if not names:
        return set()
    table = kind.table()
    with sessions(settings)() as session:
        rows = session.execute(
            select(table.name, table.status, table.worker).where(table.name.in_(names))
        ).all()
    return {name for name, status, worker in rows if status not in kind.ended and worker}


def check(
    settings: Settings,
    executor: Executor,
    kinds: Sequence[ResourceKind],
    kind: ResourceKind,
    name: str,
    lock: Lock | None = None,
) -> None:
    """The sweep's work for one job (of `kind`, one of `kinds`), when it needs it (its worker
    gone, or it waits). With `lock`: the look is taken without it, and the sweep is left out
    while another thread holds it (that thread starts or sweeps jobs: a describe need not wait
    for it, and the next look sees what it did)."""
    with sessions(settings)() as session:
        job = session.get(kind.table(), name)
        if job is None or job.status in kind.ended:
            return
        if not kind.lifecycle.needs_worker(job) and not _lost(job, executor):
            return
    if lock is None:
        sweep(settings, executor, kinds)
    elif lock.acquire(blocking=False):
        try:
            sweep(settings, executor, kinds)
        finally:
            lock.release()


def _lost(job: JobRecord, executor: Executor) -> bool:
    return job.worker is not None and executor.lost(job.worker)


def _handle_if_lost(kind: ResourceKind, job: JobRecord, executor: Executor) -> bool:
    if job.worker is None or not _lost(job, executor):
        return False
    worker = executor.describe(job.worker)
    # Else the process starting it, or its worker before it took the job over.
    who = "worker running" if job.worker_ready else "process starting"
    what = f"the openmaker {who} the job ({worker}) ended without finishing it"
    kind.lifecycle.lost(job, what)
    return True
