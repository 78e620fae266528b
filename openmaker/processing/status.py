"""A processing job's statuses, as the model names them, and how its row changes.

The model gives a processing job one status; openmaker keeps the phase it is in (Pending,
Starting, Downloading, Processing, Uploading) in the row's `secondary_status`, for the queue
and for messages, never shown as a member of the API.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from openmaker.jobs.db import JobRecord, ProcessingJobRecord


class ProcessingJobStatus(StrEnum):
    IN_PROGRESS = "InProgress"
    COMPLETED = "Completed"
    FAILED = "Failed"
    STOPPING = "Stopping"
    STOPPED = "Stopped"


ENDED = frozenset(
    {ProcessingJobStatus.COMPLETED, ProcessingJobStatus.FAILED, ProcessingJobStatus.STOPPED}
)
ACTIVE = frozenset({ProcessingJobStatus.IN_PROGRESS, ProcessingJobStatus.STOPPING})

PENDING = "Pending"
STARTING = "Starting"


def now() -> datetime:
    """Now, to the millisecond (the API's precision: a time read back compares equal)."""
    moment = datetime.now(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def enter(job: JobRecord, phase: str, message: str | None = None) -> None:
    """The job is now in `phase` (saying `message`); the primary status is left alone."""
    at = now()
    job.secondary_status = phase
    job.transitions = [
        *(job.transitions or []),
        {"Status": phase, "StartTime": at.isoformat(), "StatusMessage": message or phase},
    ]
    job.last_modified_time = at


def finish(
    job: ProcessingJobRecord, status: ProcessingJobStatus, reason: str | None = None
) -> None:
    """End the job in `status`; it no longer holds a worker or a share of the machine."""
    job.status = status.value
    job.failure_reason = reason
    job.progress = None
    job.worker_pid, job.worker_started, job.worker_ready = None, None, False
    job.placement = None
    enter(job, status.value)
    if job.processing_start_time is not None and job.processing_end_time is None:
        job.processing_end_time = job.last_modified_time


def waiting(job: JobRecord) -> bool:
    """Whether the job waits for a process to start it."""
    return job.status == ProcessingJobStatus.IN_PROGRESS and job.worker_pid is None


def status_message(job: JobRecord) -> str | None:
    return job.transitions[-1].get("StatusMessage") if job.transitions else None
