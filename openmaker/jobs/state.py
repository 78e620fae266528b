"""The training job state machine: statuses, their messages, and the transitions list."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, overload

from openmaker.host.events import STATUS_MESSAGES

if TYPE_CHECKING:  # the database layer is heavy to import; a worker loads it in the background
    from openmaker.jobs.db import TrainingJob

IN_PROGRESS, COMPLETED, FAILED, STOPPING, STOPPED = (
    "InProgress",
    "Completed",
    "Failed",
    "Stopping",
    "Stopped",
)
TERMINAL = frozenset({COMPLETED, FAILED, STOPPED})

# Which primary status each terminal secondary status belongs to.
PRIMARY_OF = {
    "Completed": COMPLETED,
    "Failed": FAILED,
    "Stopped": STOPPED,
    "MaxRuntimeExceeded": STOPPED,
}


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
    job: TrainingJob, secondary: str, message: str | None = None, at: datetime | None = None
) -> None:
    """Close the open transition and open `secondary` (at `at`, default now); terminal ones
    close at once."""
    at = at or now()
    transitions = [dict(t) for t in job.transitions or []]
    if transitions and transitions[-1].get("EndTime") is None:
        if transitions[-1]["Status"] == secondary:
            return
        transitions[-1]["EndTime"] = at.isoformat()
    entry: dict[str, str] = {
        "Status": secondary,
        "StartTime": at.isoformat(),
        "StatusMessage": message or STATUS_MESSAGES.get(secondary, secondary),
    }
    if secondary in PRIMARY_OF:
        entry["EndTime"] = at.isoformat()
        job.status = PRIMARY_OF[secondary]
    elif secondary == "Stopping":
        job.status = STOPPING
    job.transitions = [*transitions, entry]
    job.secondary_status = secondary
    job.last_modified_time = at


def finish(job: TrainingJob, secondary: str, reason: str | None) -> None:
    """End the job in a terminal secondary status (Completed, Failed, Stopped, ...)."""
    if job.training_start_time is not None and job.training_end_time is None:
        job.training_end_time = now()
    job.failure_reason = reason
    job.progress = None
    release(job)
    enter(job, secondary)


def release(job: TrainingJob) -> None:
    """The job no longer has a process running it, nor a share of the machine."""
    job.worker_pid, job.worker_started, job.worker_ready = None, None, False
    job.placement = None


def waiting(job: TrainingJob) -> bool:
    """Whether the job waits for a process to start it (new, Pending or Restarting)."""
    return job.status == IN_PROGRESS and job.worker_pid is None
