"""Invocation metrics as SageMaker publishes them: namespace `AWS/SageMaker`, dimensions
`EndpointName` and `VariantName`.

Each invocation a variant's container was sent adds to:
- `Invocations` (1), `InvocationsPerInstance` (1 / the variant's instance count);
- `Invocation4XXErrors`, `Invocation5XXErrors` (1 when the container answered 4xx / 5xx or, for
  5xx, did not answer at all; else 0);
- `ModelLatency` (the container's part) and `OverheadLatency` (the rest, from the request's
  arrival to its answer), in microseconds, for those the container answered.
A serverless variant's cold start adds `ModelSetupTime` (microseconds) once. A streamed
invocation counts as one of these once its stream ends. Asynchronous endpoints publish
SageMaker's other list instead (serving/async_metrics.py): no Invocations,
InvocationsPerInstance nor OverheadLatency, and a few series with the `EndpointName`
dimension only (kept here with the variant "").

The instances' utilization (serving/usage.py) is kept here too, in its own namespace
`/aws/sagemaker/Endpoints`, with the same two dimensions: one sample per instance each time they
are measured, so that a period's Average is over the variant's instances, as CloudWatch's is.
So is that of transform and processing jobs' instances, by `Host` (HOST_NAMESPACES).

The proxy only adds to sums in memory (a lock and a few additions); a thread writes what was
added as one statistic set per series every FLUSH_SECONDS, all in one transaction, and what is
left when the server stops.
"""

from __future__ import annotations

import atexit
import sys
import threading
import time
from dataclasses import dataclass

from sqlalchemy import insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from openmaker.jobs.db import EndpointMetricValue
from openmaker.runtime import usage
from openmaker.shapes.errors import ServiceError

NAMESPACE = "AWS/SageMaker"
INSTANCE_NAMESPACE = "/aws/sagemaker/Endpoints"
# Jobs' instances, each a series of dimension `Host` = `<job>/<instance>`: kept with the job as
# the "endpoint" and the instance as the "variant".
TRANSFORM_NAMESPACE = "/aws/sagemaker/TransformJobs"
PROCESSING_NAMESPACE = "/aws/sagemaker/ProcessingJobs"
HOST_NAMESPACES = (TRANSFORM_NAMESPACE, PROCESSING_NAMESPACE)
HOST_DIMENSION = "Host"
ENDPOINT_DIMENSION = "EndpointName"
VARIANT_DIMENSION = "VariantName"
INVOCATIONS = "Invocations"
PER_INSTANCE = "InvocationsPerInstance"
ERRORS_4XX = "Invocation4XXErrors"
ERRORS_5XX = "Invocation5XXErrors"
MODEL_LATENCY = "ModelLatency"
OVERHEAD_LATENCY = "OverheadLatency"
# A serverless variant's cold start: from an invocation finding no instance to one answering.
MODEL_SETUP_TIME = "ModelSetupTime"
# Asynchronous endpoints': per endpoint (variant ""), then per variant.
BACKLOG = "ApproximateBacklogSize"
BACKLOG_PER_INSTANCE = "ApproximateBacklogSizePerInstance"
OLDEST_AGE = "ApproximateAgeOfOldestRequest"
BACKLOG_WITHOUT_CAPACITY = "HasBacklogWithoutCapacity"
PROCESSED = "InvocationsProcessed"
FAILURES = "InvocationFailures"
EXPIRED = "ExpiredRequests"
DOWNLOAD_FAILURES = "RequestDownloadFailures"
UPLOAD_FAILURES = "ResponseUploadFailures"
DOWNLOAD_LATENCY = "RequestDownloadLatency"
UPLOAD_LATENCY = "ResponseUploadLatency"
TIME_IN_BACKLOG = "TimeInBacklog"
TOTAL_PROCESSING_TIME = "TotalProcessingTime"
# The units SageMaker documents; any other metric's is "None".
UNITS = {
    **dict.fromkeys(usage.METRICS, "Percent"),
    **dict.fromkeys(
        (
            MODEL_LATENCY,
            OVERHEAD_LATENCY,
            MODEL_SETUP_TIME,
            DOWNLOAD_LATENCY,
            UPLOAD_LATENCY,
            TIME_IN_BACKLOG,
        ),
        "Microseconds",
    ),
    TOTAL_PROCESSING_TIME: "Milliseconds",
    OLDEST_AGE: "Seconds",
    **dict.fromkeys(
        (
            BACKLOG,
            BACKLOG_PER_INSTANCE,
            PROCESSED,
            FAILURES,
            EXPIRED,
            DOWNLOAD_FAILURES,
            UPLOAD_FAILURES,
        ),
        "Count",
    ),
}
FLUSH_SECONDS = 1.0
# What each invocation adds to, in `InvocationMetrics.record`'s order.
RECORDED = (INVOCATIONS, PER_INSTANCE, ERRORS_4XX, ERRORS_5XX, MODEL_LATENCY, OVERHEAD_LATENCY)


def unit_of(name: str) -> str:
    return UNITS.get(name, "None")


@dataclass
class _Sums:
    count: int = 0
    total: float = 0.0
    low: float = float("inf")
    high: float = float("-inf")

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        if value < self.low:
            self.low = value
        if value > self.high:
            self.high = value

    def add_set(self, count: int, total: float, low: float, high: float) -> None:
        """`count` samples summed elsewhere: their sum, least and greatest."""
        self.count += count
        self.total += total
        self.low = min(self.low, low)
        self.high = max(self.high, high)


Key = tuple[str, str, str, str]  # namespace, endpoint, variant, metric


class InvocationMetrics:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self._sums: dict[Key, _Sums] = {}
        # Each variant's invocation series in `_sums`, in RECORDED's order: found once per
        # write period rather than by six look-ups an invocation.
        self._recorded: dict[tuple[str, str], tuple[_Sums, ...]] = {}
        self._since = _now_ms()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None

    def record(
        self,
        endpoint: str,
        variant: str,
        instances: int,
        status: int | None,
        model_seconds: float | None,
        total_seconds: float,
    ) -> None:
        """One invocation sent to the variant: `status` the container's (None: no answer),
        `model_seconds` how long the container took (None: it did not answer)."""
        error_4xx = 1.0 if status is not None and 400 <= status < 500 else 0.0
        error_5xx = 1.0 if status is None or status >= 500 else 0.0
        with self._lock:
            invocations, per_instance, errors_4xx, errors_5xx, model, overhead = self._recorded_of(
                endpoint, variant
            )
            invocations.add(1.0)
            per_instance.add(1.0 / max(instances, 1))
            errors_4xx.add(error_4xx)
            errors_5xx.add(error_5xx)
            if model_seconds is not None:
                model.add(round(model_seconds * 1e6))
                overhead.add(round(max(total_seconds - model_seconds, 0) * 1e6))

    def record_answered(
        self,
        endpoint: str,
        variant: str,
        instances: int,
        count: int,
        model: tuple[float, float, float],
        overhead: tuple[float, float, float],
    ) -> None:
        """`count` invocations the container answered with a 2xx, as `record` would add them
        one by one: `model` and `overhead` the sum, least and greatest of their latencies in
        microseconds (each rounded as `record` rounds it). The native lane's (api/lane.py)."""
        share = 1.0 / max(instances, 1)
        with self._lock:
            series = self._recorded_of(endpoint, variant)
            invocations, per_instance, errors_4xx, errors_5xx, model_sums, overhead_sums = series
            invocations.add_set(count, float(count), 1.0, 1.0)
            per_instance.add_set(count, count * share, share, share)
            errors_4xx.add_set(count, 0.0, 0.0, 0.0)
            errors_5xx.add_set(count, 0.0, 0.0, 0.0)
            model_sums.add_set(count, *model)
            overhead_sums.add_set(count, *overhead)

    def _recorded_of(self, endpoint: str, variant: str) -> tuple[_Sums, ...]:
        """The variant's RECORDED series, found once per write period. Holding the lock."""
        series = self._recorded.get((endpoint, variant))
        if series is None:
            series = self._recorded[(endpoint, variant)] = self._series(endpoint, variant)
        return series

    def _series(self, endpoint: str, variant: str) -> tuple[_Sums, ...]:
        """The variant's RECORDED series in this period (made as `add` makes them; ModelLatency
        and OverheadLatency written only once they have a value). Holding the lock."""
        if not self._sums:  # the first since the last write: its period starts now
            self._since = _now_ms()
        found = tuple(
            self._sums.get((NAMESPACE, endpoint, variant, n)) or _Sums() for n in RECORDED
        )
        for name, sums in zip(RECORDED, found, strict=True):
            self._sums[(NAMESPACE, endpoint, variant, name)] = sums
        self._start()
        return found

    def setup(self, endpoint: str, variant: str, seconds: float) -> None:
        """A serverless variant's instance started on demand, in `seconds` (a cold start)."""
        self.add(endpoint, variant, [(MODEL_SETUP_TIME, round(seconds * 1e6))])

    def add(
        self,
        endpoint: str,
        variant: str,
        values: list[tuple[str, float]],
        namespace: str = NAMESPACE,
    ) -> None:
        """Values of the variant's series (variant "": of the endpoint's), each a sample."""
        with self._lock:
            if not self._sums:  # the first since the last write: its period starts now
                self._since = _now_ms()
            for name, value in values:
                key = (namespace, endpoint, variant, name)
                sums = self._sums.get(key)
                if sums is None:
                    sums = self._sums[key] = _Sums()
                sums.add(value)
            self._start()

    def _start(self) -> None:
        """The writer thread, once. Holding the lock."""
        if self._writer is None:
            self._writer = threading.Thread(
                target=self._write_loop, name="invocation-metrics", daemon=True
            )
            self._writer.start()
            atexit.register(self.close)

    def flush(self) -> None:
        """Write what was added since the last write."""
        with self._lock:
            sums, self._sums, self._recorded = self._sums, {}, {}
            since, self._since = self._since, _now_ms()
        if not sums:
            return
        rows = [
            {
                "namespace": namespace,
                "endpoint": endpoint,
                "variant": variant,
                "name": name,
                "timestamp": since,
                "count": s.count,
                "total": s.total,
                "low": s.low,
                "high": s.high,
            }
            for (namespace, endpoint, variant, name), s in sums.items()
            if s.count  # a latency series made for an invocation the container never answered
        ]
        if not rows:
            return
        try:
            with self.sessions() as session:
                session.execute(insert(EndpointMetricValue), rows)
                session.commit()
        except (SQLAlchemyError, ServiceError) as exc:  # the invocations were answered
            print(f"openmaker: invocation metrics not recorded: {exc}", file=sys.stderr)

    def close(self) -> None:
        self._stop.set()
        if self._writer is not None:
            self._writer.join(timeout=10)
        self.flush()

    def _write_loop(self) -> None:
        while not self._stop.wait(FLUSH_SECONDS):
            self.flush()


def _now_ms() -> int:
    return int(time.time() * 1000)
