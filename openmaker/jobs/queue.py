"""Starting the jobs that wait, in creation order, as far as the machine has room.

There is no daemon: whoever may have made room calls `start_ready` — a command that creates a
job, a worker that ends, a stop, the recovery sweep. Jobs are chosen and their share of the
machine recorded under the database's write lock, with the starting process as their owner,
so two processes never start one job twice, and a starter that dies before its worker is
running leaves a job that the recovery sweep sees as lost.

A job waits (`Pending`) when it does not fit; the jobs behind it wait too, so that a large job
is never passed over for ever by smaller ones.
"""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session, load_only

from openmaker.jobs import capacity
from openmaker.jobs.capacity import Placement
from openmaker.jobs.db import JobRecord, sessions, writer_sessions
from openmaker.jobs.executor import Executor, Order, WorkerRef, this_process
from openmaker.jobs.resource import ResourceKind
from openmaker.settings import Settings, from_json, load_settings, to_json

LAUNCH_FILE = "launch.json"


def save_launch(settings: Settings, key: str) -> None:
    """Keep the submitter's settings (the store's endpoint and credentials among them) for
    every start of the job (its local key `key`: ResourceKind.local_key) — its restarts too,
    whoever starts them. Readable by its owner only."""
    folder = settings.jobs_dir / key
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LAUNCH_FILE
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    os.fchmod(descriptor, 0o600)  # a file left by an older openmaker may be wider
    with os.fdopen(descriptor, "w") as file:
        json.dump({"settings": to_json(settings.for_jobs())}, file)


def _launch_settings(settings: Settings, key: str) -> Settings:
    """The settings the job (its local key `key`) was submitted with; the starter's own when
    none were kept."""
    try:
        data = json.loads((settings.jobs_dir / key / LAUNCH_FILE).read_text())
    except (OSError, ValueError):
        return settings
    if "settings" in data:
        return from_json(data["settings"])
    # Kept by an older openmaker: the submitter's whole environment.
    return load_settings({**data["env"], "OPENMAKER_HOME": str(settings.home)})


def start_ready(
    settings: Settings, executor: Executor, kinds: Sequence[ResourceKind], new: bool = True
) -> None:
    """Start every waiting job that fits now, of every kind of `kinds` (all those that share
    the machine), oldest first. `new=False` (a worker that ends, making room): only the jobs
    that have waited (Pending, or to restart); a job just created is its creator's to start,
    which does so right after storing it (one gone before that leaves it to the next sweep).
    Else an ending worker, which has no fork server, would start the jobs a server is creating
    with a Python start each, outside the server's view."""
    # Read first: most calls (a command starting, a describe polling a Pending job) change
    # nothing, and need not wait for the write lock that workers recording their logs hold.
    with sessions(settings)() as session:
        if not new and not _any_waited(session, kinds):
            return  # (without loading every active job: each ending worker asks)
        jobs = _active(session, kinds)
        if not any(_startable(kind, job, new) for kind, job in jobs):
            return
        machine = capacity.machine(settings)
        if not any(_changes(_plan(jobs, machine, new))):
            return
    me = this_process()
    chosen: list[tuple[ResourceKind, JobRecord, Placement]] = []
    with writer_sessions(settings)() as session:
        for kind, job, placement, message in _plan(_active(session, kinds), machine, new):
            if placement is None:
                kind.lifecycle.waiting(job, message)
                continue
            job.placement = placement
            job.worker, job.worker_ready = me, False
            kind.lifecycle.starting(job)
            chosen.append((kind, job, placement))
        session.commit()
    for kind, job, placement in chosen:
        _submit(settings, executor, kind, job, placement, me)


def _active(
    session: Session, kinds: Sequence[ResourceKind]
) -> list[tuple[ResourceKind, JobRecord]]:
    """The jobs of every kind with work under way, in creation order. Only those without a
    worker (the only ones a start reads more of, or changes) are loaded whole: with many jobs
    running, reading each one's request and transitions was most of a start's CPU (each create
    through the server starts one). Any other column of the others loads when read."""
    found: list[tuple[ResourceKind, JobRecord]] = []
    for kind in kinds:
        table = kind.table()
        query = select(table).where(table.status.in_(kind.active))
        running = query.where(table.worker.is_not(None)).options(
            load_only(*(getattr(table, column) for column in _RUNNING_COLUMNS))
        )
        found += [(kind, job) for job in session.scalars(running)]
        found += [(kind, job) for job in session.scalars(query.where(table.worker.is_(None)))]
    return sorted(found, key=lambda pair: (_utc(pair[1].creation_time), pair[1].name))


# What a start reads of a job that has a worker: whether it needs one, the share it holds.
_RUNNING_COLUMNS = (
    "status",
    "secondary_status",
    "worker",
    "attempts",
    "placement",
    "creation_time",
)


def _utc(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; every time openmaker stores is UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


Plan = list[tuple[ResourceKind, JobRecord, Placement | None, str]]


def _plan(
    jobs: list[tuple[ResourceKind, JobRecord]], machine: capacity.Machine, new: bool = True
) -> Plan:
    """For each waiting job: where it starts now, or (None and) what it waits for. `new=False`:
    new jobs are left out (their creators start them), yet jobs behind a waiting one wait."""
    used = [job.placement for _, job in jobs if job.placement is not None]
    blocked_by: str | None = None
    plan: Plan = []
    for kind, job in jobs:
        if not kind.lifecycle.needs_worker(job):
            continue
        if not new and _new(job):
            # Its creator places it: what it takes is not this starter's to give out.
            blocked_by = blocked_by or f"{kind.noun} {job.name}"
            continue
        instances = kind.instances(job.request)
        placement = None if blocked_by else capacity.place(instances, machine, used)
        if placement is not None:
            used.append(placement)
            plan.append((kind, job, placement, ""))
            continue
        message = (
            f"Waiting for capacity behind the {blocked_by}"
            if blocked_by
            else capacity.waiting_message(instances, machine, used)
        )
        blocked_by = blocked_by or f"{kind.noun} {job.name}"
        plan.append((kind, job, None, message))
    return plan


# Every kind stores a new job in this secondary status, at its first attempt (a job chosen to
# start is given its starter as worker; one lost before it ran is restarted or ended).
NEW_STATUS = "Starting"


def _new(job: JobRecord) -> bool:
    """Whether no starter has seen the job yet (it needs a worker: just created)."""
    return job.secondary_status == NEW_STATUS and (job.attempts or 1) == 1


def _startable(kind: ResourceKind, job: JobRecord, new: bool) -> bool:
    return kind.lifecycle.needs_worker(job) and (new or not _new(job))


def _any_waited(session: Session, kinds: Sequence[ResourceKind]) -> bool:
    """Whether a job of `kinds` that is not new waits for a worker (a cheap first look: in
    plain SQL, for a worker would compile a statement for it, once, at its end)."""
    connection = session.connection()
    for kind in kinds:
        statuses = sorted(kind.active)
        table = kind.table().__table__.name  # type: ignore[attr-defined]
        query = (
            f'SELECT 1 FROM "{table}" WHERE worker IS NULL '
            f"AND status IN ({', '.join('?' * len(statuses))}) "
            "AND (secondary_status != ? OR attempts != 1) LIMIT 1"
        )
        if connection.exec_driver_sql(query, (*statuses, NEW_STATUS)).first() is not None:
            return True
    return False


def _changes(plan: Plan) -> Iterator[bool]:
    for kind, job, placement, message in plan:
        yield placement is not None or not kind.lifecycle.waits(job, message)


def _submit(
    settings: Settings,
    executor: Executor,
    kind: ResourceKind,
    job: JobRecord,
    placement: Placement,
    owner: WorkerRef,
) -> None:
    sessions = writer_sessions(settings)
    name = job.name
    table = kind.table()

    def record(worker: WorkerRef) -> None:
        # The worker becomes the job's owner before it gets the job: a starter killed now or
        # later leaves either a worker that runs it, or one that is gone and seen as lost.
        with sessions() as session:
            session.execute(
                update(table)
                .where(table.name == name, table.worker == owner)
                .where(table.status.not_in(kind.ended))
                .values(worker=worker)
            )
            session.commit()

    try:
        key = kind.local_key(name)
        launch = _launch_settings(settings, key)
        order = Order(
            kind.name, kind.runner, name, job.arn, job.request, placement, job.attempts, key=key
        )
        executor.submit(order, launch, record)
    except Exception as exc:  # the job must not wait for a worker that never came
        traceback.print_exc()
        with sessions() as session:
            row = session.get(table, name)
            if row is not None and row.status not in kind.ended:
                kind.lifecycle.failed(row, f"InternalServerError: cannot start a worker: {exc}")
                session.commit()
