"""Reading the stored metric values of training jobs, for CloudWatch's metric reads and
SageMaker Metrics: the API shapes the answers, this module owns the queries.

Times are epoch milliseconds; a range includes its start and excludes its end.
"""

from __future__ import annotations

from typing import Any, TypeVarTuple

from sqlalchemy import Select, func, literal, select, union_all
from sqlalchemy.orm import Session, sessionmaker

from openmaker.jobs.db import MetricValue, SystemMetricValue, TrainingJob, sessions
from openmaker.settings import Settings
from openmaker.training.metric_series import HOST_DIMENSION, JOB_DIMENSION, Bucket, Series

# The columns a query selects, kept through `_within`.
Columns = TypeVarTuple("Columns")


class MetricReads:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    @classmethod
    def of(cls, settings: Settings) -> MetricReads:
        """Reads of the metrics kept in the database of `settings`."""
        return cls(sessions(settings))

    def job_name(self, arn: str) -> str | None:
        """The name of the training job `arn` names; None when there is none."""
        with self.sessions() as session:
            return session.scalar(select(TrainingJob.name).where(TrainingJob.arn == arn))

    def buckets(
        self,
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
        with self.sessions() as session:
            found = [
                Bucket(start + int(i) * period, int(n), float(s), float(lo), float(hi))
                for i, n, s, lo, hi in session.execute(query)
            ]
            if not with_values or not found:
                return found
            values: dict[int, list[float]] = {}
            for timestamp, value in session.execute(select(rows.c.timestamp, rows.c.value)):
                bucket = start + (int(timestamp) - start) // period * period
                values.setdefault(bucket, []).append(value)
        return [
            Bucket(b.start, b.count, b.total, b.low, b.high, values.get(b.start, [])) for b in found
        ]

    def values(self, series: Series, start: int | None, end: int | None) -> list[tuple[int, float]]:
        """Every value of the series as (timestamp ms, value), in the order they were recorded."""
        rows = _rows(series, start, end).subquery()
        query = select(rows.c.timestamp, rows.c.value).order_by(rows.c.ordinal)
        with self.sessions() as session:
            return [(int(timestamp), float(value)) for timestamp, value in session.execute(query)]

    def all_series(self, active_since: int | None = None) -> list[Series]:
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
        with self.sessions() as session:
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
