"""Training jobs' metrics as CloudWatch names them (training/metric_reads.py reads their values).

Namespace `/aws/sagemaker/TrainingJobs`, as SageMaker publishes there:
- a `MetricDefinitions` metric under dimension `TrainingJobName` (the values of every host)
  and under dimension `Host` = `<job>/algo-N` (that host's values);
- a host's utilization (CPUUtilization, ...; training/host/system_metrics.py) under `Host`.
Times are epoch milliseconds; a range includes its start and excludes its end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
