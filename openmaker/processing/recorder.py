"""A processing job's host events, recorded (openmaker/jobs/recorder.py writes the rows): log
lines as they are; a host's phase and transfer progress as changes to the job's row; a host's
utilization as SageMaker publishes it (namespace `/aws/sagemaker/ProcessingJobs`, dimension
`Host` = `<job>/algo-N`), kept with the endpoints' metrics (serving/metrics.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from openmaker.jobs.db import writer_sessions
from openmaker.jobs.recorder import JobRecorder
from openmaker.processing import kind, status
from openmaker.processing.status import ProcessingJobStatus
from openmaker.serving.metrics import PROCESSING_NAMESPACE, InvocationMetrics
from openmaker.settings import Settings
from openmaker.training.host.events import (
    Event,
    LogLine,
    LogLines,
    StatusChanged,
    SystemMetrics,
    TransferProgress,
)

if TYPE_CHECKING:
    from openmaker.jobs.db import ProcessingJobRecord

# The training host reports its code's start as the "Training" phase.
_PHASES = {"Training": "Processing"}


class ProcessingRecorder(JobRecorder["ProcessingJobRecord"]):
    def __init__(self, settings: Settings, job_name: str) -> None:
        super().__init__(settings, job_name, kind.table, kind.LOG_GROUP, _apply)
        self.usage: InvocationMetrics | None = None  # made at the first sample

    def emit(self, event: Event) -> None:
        """Record what a host reports (a host's `emit`)."""
        if isinstance(event, LogLines):
            self.lines(event.host, event.timestamp_ms, event.messages, event.size)
        elif isinstance(event, LogLine):
            self.lines(event.host, event.timestamp_ms, [event.message], len(event.message))
        elif isinstance(event, StatusChanged | TransferProgress):
            self.change(event)
        elif isinstance(event, SystemMetrics):
            if self.usage is None:
                self.usage = InvocationMetrics(writer_sessions(self.settings))
            values = sorted(event.values.items())
            self.usage.add(self.job_name, event.host, values, PROCESSING_NAMESPACE)

    def close(self) -> None:
        super().close()
        if self.usage is not None:
            self.usage.close()


def _apply(job: ProcessingJobRecord, event: object) -> None:
    if job.status != ProcessingJobStatus.IN_PROGRESS:
        return
    if isinstance(event, StatusChanged):
        phase = _PHASES.get(event.status, event.status)
        if phase != job.secondary_status:
            status.enter(job, phase, event.detail)
        if phase == "Processing" and job.processing_start_time is None:
            job.processing_start_time = datetime.fromtimestamp(event.at, UTC)
    elif isinstance(event, TransferProgress):
        job.progress = {
            "phase": event.phase,
            "done": event.done,
            "total": event.total,
            "seconds": event.seconds,
        }
