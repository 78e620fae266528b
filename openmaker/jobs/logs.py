"""Log streams in the CloudWatch Logs layout the SageMaker clients read."""

from __future__ import annotations

from dataclasses import dataclass

LOG_GROUP = "/aws/sagemaker/TrainingJobs"
# What CloudWatch Logs counts for an event beyond its message, in responses and quotas alike.
EVENT_OVERHEAD = 26


def stream_name(job_name: str, host: str, started_epoch: int) -> str:
    """`<job>/algo-1-<epoch seconds>`, as SageMaker names a host's stream."""
    return f"{job_name}/{host}-{started_epoch}"


@dataclass(frozen=True)
class LogRecord:
    """One log line of a job, as the service and the CLI pass it around."""

    id: int
    stream: str
    timestamp: int
    message: str
