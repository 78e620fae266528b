"""What a host reports while it runs. A host never writes the database: it emits these."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class StatusChanged:
    """A new `SecondaryStatus`. Its message is the job state's (openmaker/training/status.py);
    `detail` is what the host adds to it (which image, how it runs)."""

    status: str
    detail: str | None = None
    # When it happened (epoch seconds): events may reach the database later.
    at: float = field(default_factory=time.time)
    # Said instead of the status's own message; it replaces the message of the status under
    # way when that is `status` already (an image pull's progress).
    message: str | None = None


@dataclass(frozen=True)
class LogLine:
    host: str
    timestamp_ms: int
    message: str


@dataclass(frozen=True)
class LogLines:
    """The lines of one host read at one time: a flood of output is carried in few events."""

    host: str
    timestamp_ms: int
    messages: list[str]
    # Their size in bytes as read (for the recorder's bounded backlog).
    size: int


@dataclass(frozen=True)
class TransferProgress:
    """Bytes moved so far in a download or upload phase ("Downloading" or "Uploading")."""

    phase: str
    done: int
    total: int
    seconds: float


@dataclass(frozen=True)
class MetricSample:
    """A value of one of the job's `MetricDefinitions`, found in a log line."""

    name: str
    timestamp_ms: int
    value: float
    host: str | None = None  # whose log line it was


@dataclass(frozen=True)
class SystemMetrics:
    """One sample of a host's utilization, by metric name (CPUUtilization, ...), in percent."""

    host: str
    timestamp_ms: int
    values: dict[str, float]


Event = StatusChanged | LogLine | LogLines | TransferProgress | MetricSample | SystemMetrics
Emit = Callable[[Event], None]
