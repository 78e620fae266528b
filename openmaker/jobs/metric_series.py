"""Training jobs' metrics as CloudWatch names them, read from the stored values.

Namespace `/aws/sagemaker/TrainingJobs`, as SageMaker publishes there:
- a `MetricDefinitions` metric under dimension `TrainingJobName` (the values of every host)
  and under dimension `Host` = `<job>/algo-N` (that host's values);
- a host's utilization (CPUUtilization, ...; host/system_metrics.py) under `Host`.
Times are epoch milliseconds; a range includes its start and excludes its end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVarTuple

from sqlalchemy import Select, func, literal, select, union_all
from sqlalchemy.orm import Session

from openmaker.jobs.db import MetricValue, SystemMetricValue

NAMESPACE = "/aws/sagemaker/TrainingJobs"
JOB_DIMENSION = "TrainingJobName"
HOST_DIMENSION = "Host"
SYSTEM_METRICS = (
    "CPUUtilization",
    "MemoryUtilization",
    "DiskUtilization",
    "GPUUtilization",
    "GPUMemoryUtilization",
)
# The columns a query selects, kept through `_within`.
Columns = TypeVarTuple("Columns")
BASIC_STATISTICS = ("SampleCount", "Average", "Sum", "Minimum", "Maximum")


@dataclass(frozen=True)
class Series:
    """One metric: its name and its one dimension."""

    name: str
    dimension: str  # JOB_DIMENSION or HOST_DIMENSION
    value: str  # the job's name, or `<job>/<host>`

    @property
    def job(self) -> str:
        return self.value.rpartition("/")[0] if self.dimension == HOST_DIMENSION else self.value

    @property
    def host(self) -> str | None:
        return self.value.rpartition("/")[2] if self.dimension == HOST_DIMENSION else None

    @property
    def unit(self) -> str:
        return "Percent" if self.name in SYSTEM_METRICS else "None"

    def listing(self) -> dict[str, Any]:
        return {
            "Namespace": NAMESPACE,
            "MetricName": self.name,
            "Dimensions": [{"Name": self.dimension, "Value": self.value}],
        }


def series_of(namespace: str, name: str, dimensions: Sequence[dict[str, str]]) -> Series | None:
    """The series a request names, or None where no such metric is ever published (CloudWatch
    then answers no data, not an error)."""
    if namespace != NAMESPACE or len(dimensions) != 1:
        return None
    [dimension] = dimensions
    kind, value = dimension.get("Name"), dimension.get("Value", "")
    if kind == JOB_DIMENSION or (kind == HOST_DIMENSION and "/" in value):
        return Series(name, kind, value)
    return None


@dataclass(frozen=True)
class Bucket:
    """The values of one period: `start` (ms) and CloudWatch's statistics of them."""

    start: int
    count: int
    total: float
    low: float
    high: float
    values: list[float] | None = None  # kept only where percentiles are asked for

    def statistic(self, name: str) -> float | None:
        """A basic statistic, or a percentile `pNN` / `pNN.N` (None: no such statistic)."""
        basic = {
            "SampleCount": float(self.count),
            "Average": self.total / self.count,
            "Sum": self.total,
            "Minimum": self.low,
            "Maximum": self.high,
        }
        if name in basic:
            return basic[name]
        share = percentile_of(name)
        if share is None or self.values is None:
            return None
        ordered = sorted(self.values)
        # Nearest rank, as a percentile of few values is best read.
        rank = max(1, math.ceil(share / 100 * len(ordered)))
        return ordered[rank - 1]


def percentile_of(statistic: str) -> float | None:
    """The share named by `p90` or `p99.9`, between 0 and 100; None for anything else."""
    if not statistic.startswith("p"):
        return None
    try:
        share = float(statistic[1:])
    except ValueError:
        return None
    return share if 0 <= share <= 100 and statistic[1:].replace(".", "", 1).isdigit() else None


def buckets(
    session: Session,
    series: Series,
    start: int,
    end: int,
    period: int,
    with_values: bool = False,
) -> list[Bucket]:
    """The periods of [start, end) that hold values, oldest first; `period` in ms."""
    rows = _rows(series, start, end).subquery()
    index = ((rows.c.timestamp - start) // period).label("bucket")
    query = (
        select(
            index,
            func.count(),
            func.sum(rows.c.value),
            func.min(rows.c.value),
            func.max(rows.c.value),
        )
        .group_by(index)
        .order_by(index)
    )
    found = [
        Bucket(start + int(i) * period, int(n), float(s), float(lo), float(hi))
        for i, n, s, lo, hi in session.execute(query)
    ]
    if not with_values or not found:
        return found
    values: dict[int, list[float]] = {}
    for timestamp, value in session.execute(select(rows.c.timestamp, rows.c.value)):
        values.setdefault(start + (int(timestamp) - start) // period * period, []).append(value)
    return [
        Bucket(b.start, b.count, b.total, b.low, b.high, values.get(b.start, [])) for b in found
    ]


def values(session: Session, series: Series, start: int | None, end: int | None) -> list[Any]:
    """Every value of the series as (timestamp ms, value), in the order they were recorded."""
    rows = _rows(series, start, end).subquery()
    return list(session.execute(select(rows.c.timestamp, rows.c.value).order_by(rows.c.ordinal)))


def all_series(session: Session, active_since: int | None = None) -> list[Series]:
    """Every series that has values (since `active_since`, ms, where given), sorted."""
    found: set[Series] = set()
    by_job = select(MetricValue.job_name, MetricValue.name).group_by(
        MetricValue.job_name, MetricValue.name
    )
    by_host = (
        select(MetricValue.job_name, MetricValue.host, MetricValue.name)
        .where(MetricValue.host.is_not(None))
        .group_by(MetricValue.job_name, MetricValue.host, MetricValue.name)
    )
    system = select(
        SystemMetricValue.job_name, SystemMetricValue.host, SystemMetricValue.name
    ).group_by(SystemMetricValue.job_name, SystemMetricValue.host, SystemMetricValue.name)
    if active_since is not None:
        by_job = by_job.having(func.max(MetricValue.timestamp) >= active_since)
        by_host = by_host.having(func.max(MetricValue.timestamp) >= active_since)
        system = system.having(func.max(SystemMetricValue.timestamp) >= active_since)
    found.update(Series(name, JOB_DIMENSION, job) for job, name in session.execute(by_job))
    for query in (by_host, system):
        found.update(
            Series(name, HOST_DIMENSION, f"{job}/{host}")
            for job, host, name in session.execute(query)
        )
    return sorted(found, key=lambda s: (s.value, s.name, s.dimension))


def _rows(series: Series, start: int | None, end: int | None) -> Select[int, float, int]:
    """The series' rows in [start, end) as (timestamp, value, ordinal): a host's system
    samples and its metrics' values, or a job's metric values of every host."""
    algorithm = _within(
        select(
            MetricValue.timestamp.label("timestamp"),
            MetricValue.value.label("value"),
            MetricValue.id.label("ordinal"),
        ).where(MetricValue.job_name == series.job, MetricValue.name == series.name),
        MetricValue.timestamp,
        start,
        end,
    )
    if series.host is None:
        return algorithm
    algorithm = algorithm.where(MetricValue.host == series.host)
    system = _within(
        select(
            SystemMetricValue.timestamp.label("timestamp"),
            SystemMetricValue.value.label("value"),
            # After the job's metric values: a name is rarely both.
            (SystemMetricValue.id + literal(2**40)).label("ordinal"),
        ).where(
            SystemMetricValue.job_name == series.job,
            SystemMetricValue.name == series.name,
            SystemMetricValue.host == series.host,
        ),
        SystemMetricValue.timestamp,
        start,
        end,
    )
    rows = union_all(algorithm, system).subquery()
    return select(rows.c.timestamp, rows.c.value, rows.c.ordinal)


def _within(
    query: Select[*Columns], column: Any, start: int | None, end: int | None
) -> Select[*Columns]:
    if start is not None:
        query = query.where(column >= start)
    if end is not None:
        query = query.where(column < end)
    return query
