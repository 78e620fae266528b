"""A training job's host events, recorded (openmaker/jobs/recorder.py writes the rows): log
lines, metric values and utilization samples as they are; a new secondary status and transfer
progress as changes to the job's row."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from openmaker.jobs.recorder import JobRecorder
from openmaker.settings import Settings
from openmaker.training import kind, state
from openmaker.training.host.events import (
    Event,
    LogLine,
    LogLines,
    MetricSample,
    StatusChanged,
    SystemMetrics,
    TransferProgress,
)
from openmaker.training.status import SecondaryStatus, message_of

if TYPE_CHECKING:
    from openmaker.jobs.db import TrainingJob


class TrainingRecorder(JobRecorder["TrainingJob"]):
    def __init__(self, settings: Settings, job_name: str) -> None:
        super().__init__(settings, job_name, kind.table, kind.TRAINING.log_group, _apply)

    def emit(self, event: Event) -> None:
        """Record what a host reports (a host's `emit`)."""
        if isinstance(event, LogLines):
            self.lines(event.host, event.timestamp_ms, event.messages, event.size)
        elif isinstance(event, LogLine):
            self.lines(event.host, event.timestamp_ms, [event.message], len(event.message))
        elif isinstance(event, MetricSample):
            self.metric(event.name, event.timestamp_ms, event.value, event.host)
        elif isinstance(event, SystemMetrics):
            self.samples(event.host, event.timestamp_ms, event.values)
        else:
            self.change(event)


def _apply(job: TrainingJob, event: object) -> None:
    if isinstance(event, StatusChanged):
        if job.status == state.IN_PROGRESS:
            at = datetime.fromtimestamp(event.at, UTC)
            message = event.message or message_of(event.status, event.detail)
            if event.message and job.secondary_status == event.status:
                state.retell(job, message, at)
            else:
                state.enter(job, event.status, message, at)
            if event.status == SecondaryStatus.TRAINING and job.training_start_time is None:
                job.training_start_time = at
    elif isinstance(event, TransferProgress):
        job.progress = {
            "phase": event.phase,
            "done": event.done,
            "total": event.total,
            "seconds": event.seconds,
        }
