"""The training job state machine: its status, secondary status and the transitions list."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, overload

from openmaker.training.status import (
    ENDED,
    PRIMARY_OF,
    SecondaryStatus,
    TrainingJobStatus,
    message_of,
)

if TYPE_CHECKING:  # the database layer is heavy to import; a worker loads it in the background
    from openmaker.jobs.db import JobRecord, TrainingJob

IN_PROGRESS = TrainingJobStatus.IN_PROGRESS
COMPLETED = TrainingJobStatus.COMPLETED
FAILED = TrainingJobStatus.FAILED
STOPPING = TrainingJobStatus.STOPPING
STOPPED = TrainingJobStatus.STOPPED
TERMINAL = ENDED


def now() -> datetime:
    """Now, to the millisecond: the precision the API's timestamps carry, so that a time a
    client read back (e.g. a CreationTimeAfter filter) compares equal to the stored one."""
    moment = datetime.now(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every time openmaker stores is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def enter(
    job: TrainingJob,
    secondary: SecondaryStatus | str,
    message: str | None = None,
    at: datetime | None = None,
) -> None:
    """Close the open transition and open `secondary` (at `at`, default now); terminal ones
    close at once. A status the model does not name is a ValueError."""
    status = SecondaryStatus(secondary)
    at = at or now()
    transitions = [dict(t) for t in job.transitions or []]
    if transitions and transitions[-1].get("EndTime") is None:
        if transitions[-1]["Status"] == status:
            return
        transitions[-1]["EndTime"] = at.isoformat()
    entry: dict[str, str] = {
        "Status": status.value,
        "StartTime": at.isoformat(),
        "StatusMessage": message or message_of(status),
    }
    if status in PRIMARY_OF:
        entry["EndTime"] = at.isoformat()
        job.status = PRIMARY_OF[status].value
    elif status == SecondaryStatus.STOPPING:
        job.status = STOPPING.value
    job.transitions = [*transitions, entry]
    job.secondary_status = status.value
    job.last_modified_time = at


def retell(job: TrainingJob, message: str, at: datetime | None = None) -> None:
    """A new StatusMessage for the secondary status under way (progress within it)."""
    transitions = [dict(t) for t in job.transitions or []]
    if not transitions or transitions[-1].get("EndTime") is not None:
        return
    transitions[-1]["StatusMessage"] = message
    job.transitions = transitions
    job.last_modified_time = at or now()


def finish(job: TrainingJob, secondary: SecondaryStatus | str, reason: str | None) -> None:
    """End the job in a terminal secondary status (Completed, Failed, Stopped, ...)."""
    if job.training_start_time is not None and job.training_end_time is None:
        job.training_end_time = now()
    job.failure_reason = reason
    job.progress = None
    release(job)
    enter(job, secondary)


def wait(job: TrainingJob, message: str) -> None:
    """Enter Pending, or update its message (what the job waits for) when it changed."""
    if job.secondary_status != SecondaryStatus.PENDING:
        enter(job, SecondaryStatus.PENDING, message)
    elif status_message(job) != message:
        transitions = [dict(t) for t in job.transitions]
        transitions[-1]["StatusMessage"] = message
        job.transitions = transitions
        job.last_modified_time = now()


def status_message(job: JobRecord) -> str | None:
    """The message of the job's current secondary status."""
    return job.transitions[-1].get("StatusMessage") if job.transitions else None


def release(job: TrainingJob) -> None:
    """The job no longer has a process running it, nor a share of the machine."""
    job.worker, job.worker_ready = None, False
    job.placement = None


def waiting(job: TrainingJob) -> bool:
    """Whether the job waits for a process to start it (new, Pending or Restarting)."""
    return job.status == IN_PROGRESS and job.worker is None
