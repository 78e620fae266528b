"""Reading the endpoints' metrics (serving/metrics.py writes them: invocations in `AWS/SageMaker`,
the instances' utilization in `/aws/sagemaker/Endpoints`), for CloudWatch's metric reads and the
console: the API shapes the answers, this module owns the queries.

A series is one metric of one endpoint variant, in one namespace. The stored rows are
statistic sets, so a period's statistics are exact for SampleCount, Sum, Average, Minimum and
Maximum; percentiles are not kept (CloudWatch has none for statistic sets either). Times are
epoch milliseconds; a range includes its start and excludes its end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from openmaker.jobs.db import EndpointMetricValue
from openmaker.jobs.db import sessions as db_sessions
from openmaker.serving.metrics import (
    ENDPOINT_DIMENSION,
    HOST_DIMENSION,
    HOST_NAMESPACES,
    INSTANCE_NAMESPACE,
    NAMESPACE,
    VARIANT_DIMENSION,
    unit_of,
)
from openmaker.settings import Settings

NAMESPACES = (NAMESPACE, INSTANCE_NAMESPACE, *HOST_NAMESPACES)


@dataclass(frozen=True)
class StatisticSet:
    """The values of one period: `start` (ms) and CloudWatch's statistics of them."""

    start: int
    count: int
    total: float
    low: float
    high: float

    def statistic(self, name: str) -> float | None:
        """A basic statistic (None: no such statistic, percentiles included)."""
        return {
            "SampleCount": float(self.count),
            "Average": self.total / self.count,
            "Sum": self.total,
            "Minimum": self.low,
            "Maximum": self.high,
        }.get(name)


@dataclass(frozen=True)
class EndpointSeries:
    name: str
    endpoint: str  # or the job, in HOST_NAMESPACES
    variant: str  # "": a series of the endpoint's own (dimension EndpointName only); or the host
    namespace: str = NAMESPACE

    @property
    def unit(self) -> str:
        return unit_of(self.name)

    @property
    def value(self) -> str:  # what series are sorted by
        return f"{self.endpoint}/{self.variant}"

    def dimensions(self) -> dict[str, str]:
        if self.namespace in HOST_NAMESPACES:
            return {HOST_DIMENSION: self.value}
        found = {ENDPOINT_DIMENSION: self.endpoint}
        if self.variant:
            found[VARIANT_DIMENSION] = self.variant
        return found

    def listing(self) -> dict[str, Any]:
        return {
            "Namespace": self.namespace,
            "MetricName": self.name,
            "Dimensions": [{"Name": k, "Value": v} for k, v in self.dimensions().items()],
        }

    def passes(self, filters: Sequence[dict[str, str]]) -> bool:
        """ListMetrics' dimension filters: each names a dimension it has (and its value, where
        one is given)."""
        values = self.dimensions()
        return all(
            f["Name"] in values and f.get("Value", values[f["Name"]]) == values[f["Name"]]
            for f in filters
        )


def endpoint_series_of(
    name: str, dimensions: Sequence[dict[str, str]], namespace: str = NAMESPACE
) -> EndpointSeries | None:
    """The series `namespace` + `name` + `dimensions` names; None where none is ever published
    (the dimensions exactly as SageMaker publishes them: both, an endpoint's own invocation
    series' EndpointName alone, or a job's instance's Host)."""
    given = {d.get("Name"): d.get("Value", "") for d in dimensions}
    if namespace in HOST_NAMESPACES:
        job, _, host = given.get(HOST_DIMENSION, "").rpartition("/")
        if len(given) != 1 or not job or not host:
            return None
        return EndpointSeries(name, job, host, namespace)
    if len(given) != len(dimensions) or ENDPOINT_DIMENSION not in given:
        return None
    if set(given) == {ENDPOINT_DIMENSION} and namespace == NAMESPACE:
        return EndpointSeries(name, given[ENDPOINT_DIMENSION], "")
    if set(given) != {ENDPOINT_DIMENSION, VARIANT_DIMENSION} or not given[VARIANT_DIMENSION]:
        return None
    return EndpointSeries(name, given[ENDPOINT_DIMENSION], given[VARIANT_DIMENSION], namespace)


class EndpointMetricReads:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    @classmethod
    def of(cls, settings: Settings) -> EndpointMetricReads:
        """Reads of the metrics kept in the database of `settings`."""
        return cls(db_sessions(settings))

    def buckets(
        self, series: EndpointSeries, start: int, end: int, period: int
    ) -> list[StatisticSet]:
        """The periods of [start, end) that hold values, oldest first; `period` in ms."""
        row = EndpointMetricValue
        index = ((row.timestamp - start) // period).label("bucket")
        query = (
            select(
                index,
                func.sum(row.count),
                func.sum(row.total),
                func.min(row.low),
                func.max(row.high),
            )
            .where(
                row.namespace == series.namespace,
                row.endpoint == series.endpoint,
                row.variant == series.variant,
                row.name == series.name,
                row.timestamp >= start,
                row.timestamp < end,
            )
            .group_by(index)
            .order_by(index)
        )
        with self.sessions() as session:
            return [
                StatisticSet(start + int(i) * period, int(n), float(s), float(lo), float(hi))
                for i, n, s, lo, hi in session.execute(query)
            ]

    def all_series(
        self, active_since: int | None = None, namespace: str | None = None
    ) -> list[EndpointSeries]:
        """Every series that has values (since `active_since`, ms, where given; of `namespace`,
        where given)."""
        row = EndpointMetricValue
        query = select(row.namespace, row.endpoint, row.variant, row.name).group_by(
            row.namespace, row.endpoint, row.variant, row.name
        )
        if namespace is not None:
            query = query.where(row.namespace == namespace)
        if active_since is not None:
            query = query.having(func.max(row.timestamp) >= active_since)
        with self.sessions() as session:
            found = [EndpointSeries(n, e, v, ns) for ns, e, v, n in session.execute(query)]
        return sorted(found, key=lambda s: (s.namespace, s.value, s.name))
