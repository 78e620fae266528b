"""What every kind's service (training, processing, transform jobs) does alike with its jobs'
rows: add a new job with its tags, read one as it is now, and stop one (a job waiting for
capacity ends at once; one a worker runs is marked Stopping and its worker signalled or, not
ready yet, reads the request from the row when it gets ready)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from sqlalchemy import Select, Table, bindparam, select
from sqlalchemy.exc import IntegrityError

from openmaker.jobs.tags import put as put_tags
from openmaker.shapes.errors import ResourceInUse, ValidationException

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from openmaker.jobs.db import JobRecord
    from openmaker.jobs.executor import Executor
    from openmaker.jobs.resource import ResourceKind

Job = TypeVar("Job", bound="JobRecord")
Sessions = Callable[[], "Session"]

STOPPING = "Stopping"  # every kind's status while its worker stops it
STOPPED = "Stopped"  # what a stop request asks for (its reason, as stored)


def insert(
    writers: Sessions, kind: ResourceKind, job: JobRecord, tags: list[dict[str, str]]
) -> None:
    """Add the new `job` of `kind` with its `tags`: ResourceInUse if one of its name exists."""
    with writers() as session:
        session.add(job)
        try:
            session.flush()
            put_tags(session, job.arn, tags)
            session.commit()
        except IntegrityError:
            noun = kind.noun[:1].upper() + kind.noun[1:]
            raise ResourceInUse(f"{noun} {job.name} already exists") from None


def add_tagged(session: Session, record: object, arn: str, tags: list[dict[str, str]],
               noun: str) -> None:  # fmt: skip
    """Add `record` (a model, an endpoint, an algorithm: any resource but a job) with its
    tags, and commit: a name taken is SageMaker's ValidationException for such resources."""
    session.add(record)
    try:
        session.flush()
        put_tags(session, arn, tags)
        session.commit()
    except IntegrityError:
        raise ValidationException(f'Cannot create already existing {noun} "{arn}".') from None


def current(
    sessions: Sessions,
    table: type[Job],
    ended: Collection[str],
    name: str,
    not_found: Callable[[str], Exception],
    recheck: Callable[[str], None],
) -> Job:
    """Job `name` as it is now: `recheck` first looks at one not ended (`ended`), for a job
    must never stay InProgress with nothing running it."""
    job = _read(sessions, table, name)
    if job is None:
        raise not_found(name)
    if job.status not in ended:
        recheck(name)
        job = _read(sessions, table, name)
        assert job is not None
    return job


def _read(sessions: Sessions, table: type[Job], name: str) -> Job | None:
    """The row of job `name`, as a new (unsaved) record: read with a plain select, for a
    session's `get` (identity map, loading) took half again as long, for a row only read."""
    with sessions() as session:
        query = _by_name(table.__table__)  # type: ignore[attr-defined]
        row = session.connection().execute(query, {"name": name}).first()
    return None if row is None else table(**row._mapping)


@functools.cache
def _by_name(table: Table) -> Select[Any]:
    return select(table).where(table.c.name == bindparam("name"))


@dataclass(frozen=True)
class Stopping(Generic[Job]):
    """A kind's own steps of a stop, in its own statuses."""

    waiting: Callable[[Job], bool]  # no worker runs it yet (it waits for capacity)
    stopped: Callable[[Job], None]  # a waiting job ends, stopped
    stopping: Callable[[Job], None]  # a running job is marked Stopping
    not_found: Callable[[str], Exception]  # no job of that name


def stop_job(
    writers: Sessions,
    executor: Executor,
    kind: ResourceKind,
    steps: Stopping[Job],
    name: str,
    start_waiting: Callable[[], None],
) -> None:
    """Stop job `name` of `kind`; `start_waiting` starts the jobs behind one that was waiting
    (they may fit now)."""
    with writers() as session:
        job: Job | None = session.get(kind.table(), name)  # type: ignore[assignment]
        if job is None:
            raise steps.not_found(name)
        if job.status in kind.ended:
            raise ValidationException(
                f"The request was rejected because the {kind.noun} is in status {job.status}."
            )
        if job.status == STOPPING:
            return
        job.stop_requested = STOPPED
        if steps.waiting(job):  # no worker to stop
            steps.stopped(job)
            session.commit()
            start_waiting()
            return
        steps.stopping(job)
        # A worker not yet ready reads `stop_requested` when it gets ready: under the write
        # lock, one of the two always sees the other.
        worker = job.worker if job.worker_ready else None
        session.commit()
    if worker is not None:
        executor.stop(worker)
