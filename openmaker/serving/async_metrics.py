"""An asynchronous endpoint's CloudWatch metrics, as SageMaker lists them for endpoints with an
AsyncInferenceConfig (names and units in serving/metrics.py, written by its InvocationMetrics).

Each request, once answered, adds to its variant's series (`EndpointName` + `VariantName`):
`InvocationsProcessed` (1), `TimeInBacklog` (queued until taken, µs), `TotalProcessingTime`
(queued until answered, ms); `InvocationFailures`, `ExpiredRequests`,
`RequestDownloadFailures`, `ResponseUploadFailures` (1, when that happened);
`RequestDownloadLatency` and `ResponseUploadLatency` (µs); and, when the container was sent
it, the real-time endpoints' `Invocation4XXErrors`, `Invocation5XXErrors` and `ModelLatency`.
`NotificationFailures` is never published: notifications go to the endpoint's log group,
which does not refuse them.

The queue is sampled into the endpoint's own series (`EndpointName` only):
`ApproximateBacklogSize` (requests waiting or in hand), `ApproximateBacklogSizePerInstance`
(that over the instances able to take requests; not published with none),
`ApproximateAgeOfOldestRequest` (s) and `HasBacklogWithoutCapacity` (1 when requests wait and
no instance can take them, else 0) — at once when requests come to an empty queue, then every
BUSY_SECONDS while they wait (and once after), every IDLE_SECONDS otherwise, so an idle
endpoint adds few rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from openmaker.serving import async_queue
from openmaker.serving.metrics import (
    BACKLOG,
    BACKLOG_PER_INSTANCE,
    BACKLOG_WITHOUT_CAPACITY,
    DOWNLOAD_FAILURES,
    DOWNLOAD_LATENCY,
    ERRORS_4XX,
    ERRORS_5XX,
    EXPIRED,
    FAILURES,
    MODEL_LATENCY,
    OLDEST_AGE,
    PROCESSED,
    TIME_IN_BACKLOG,
    TOTAL_PROCESSING_TIME,
    UPLOAD_FAILURES,
    UPLOAD_LATENCY,
    InvocationMetrics,
)

BUSY_SECONDS = 1.0
IDLE_SECONDS = 60.0


@dataclass
class Handled:
    """What became of one asynchronous request, for its metrics (times: time.time())."""

    variant: str
    queued_at: float
    taken_at: float
    ok: bool = False
    expired: bool = False
    download_seconds: float | None = None
    download_failed: bool = False
    sent: bool = False  # to the container
    status: int | None = None  # the container's (None: it did not answer)
    model_seconds: float | None = None
    upload_seconds: float | None = None
    upload_failed: bool = False


def record(metrics: InvocationMetrics, endpoint: str, handled: Handled, ended: float) -> None:
    """The request answered at `ended` (time.time())."""
    h = handled
    values: list[tuple[str, float]] = [
        (PROCESSED, 1.0),
        (TIME_IN_BACKLOG, _micro(h.taken_at - h.queued_at)),
        (TOTAL_PROCESSING_TIME, round(max(ended - h.queued_at, 0) * 1000)),
    ]
    counted = (
        (FAILURES, not h.ok),
        (EXPIRED, h.expired),
        (DOWNLOAD_FAILURES, h.download_failed),
        (UPLOAD_FAILURES, h.upload_failed),
    )
    values += [(name, 1.0) for name, happened in counted if happened]
    if h.download_seconds is not None:
        values.append((DOWNLOAD_LATENCY, _micro(h.download_seconds)))
    if h.upload_seconds is not None:
        values.append((UPLOAD_LATENCY, _micro(h.upload_seconds)))
    if h.sent:
        values.append((ERRORS_4XX, 1.0 if h.status is not None and 400 <= h.status < 500 else 0))
        values.append((ERRORS_5XX, 1.0 if h.status is None or h.status >= 500 else 0.0))
    if h.model_seconds is not None:
        values.append((MODEL_LATENCY, _micro(h.model_seconds)))
    metrics.add(endpoint, h.variant, values)


class BacklogSampler:
    """The queue's state, sampled as the runner looks at it (`sample`, often)."""

    def __init__(self, metrics: InvocationMetrics, endpoint: str) -> None:
        self.metrics, self.endpoint = metrics, endpoint
        self._last = float("-inf")  # when last sampled (time.monotonic())
        self._was_busy = False

    def sample(self, waiting: list[Path], capacity: int, now: float, clock: float) -> None:
        """`waiting`: the queue's requests, oldest first; `capacity`: the instances able to
        take them; `now`: time.time(); `clock`: time.monotonic()."""
        busy = bool(waiting)
        if busy and not self._was_busy:
            every = 0.0  # the first request after a quiet time shows at once
        else:
            every = BUSY_SECONDS if busy or self._was_busy else IDLE_SECONDS
        if clock - self._last < every:
            return
        self._last, self._was_busy = clock, busy
        oldest = async_queue.queued_at(waiting[0]) if waiting else now
        values: list[tuple[str, float]] = [
            (BACKLOG, float(len(waiting))),
            (OLDEST_AGE, round(max(now - oldest, 0.0), 3)),
            (BACKLOG_WITHOUT_CAPACITY, 1.0 if busy and capacity == 0 else 0.0),
        ]
        if capacity:
            values.append((BACKLOG_PER_INSTANCE, len(waiting) / capacity))
        self.metrics.add(self.endpoint, "", values)


def _micro(seconds: float) -> float:
    return round(max(seconds, 0.0) * 1e6)
