"""SageMaker Metrics' BatchGetMetrics: a training job's `MetricDefinitions` values by its ARN.

A rest-json service (`POST /BatchGetMetrics`, signed for `sagemaker`) on the server's address.
Each query is answered on its own: one naming no job of this server gets Status
`ValidationError` and a message, the others are still answered. `Start`, `End` and the
timestamps on the x-axis are epoch seconds; a query's values are those of every host.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from openmaker.api.operations import Handler
from openmaker.training.metric_reads import MetricReads
from openmaker.training.metric_series import JOB_DIMENSION, Series

SERVICE = "sagemaker-metrics"
PATH = "/BatchGetMetrics"
CONTENT_TYPE = "application/json"
PERIOD_SECONDS = {"OneMinute": 60, "FiveMinute": 300, "OneHour": 3600}


class SageMakerMetrics:
    def __init__(self, reads: MetricReads) -> None:
        self.reads = reads

    def handlers(self) -> dict[str, Handler]:
        return {"BatchGetMetrics": self.batch_get_metrics}

    def batch_get_metrics(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"MetricQueryResults": [self._one(q) for q in params["MetricQueries"]]}

    def _one(self, query: dict[str, Any]) -> dict[str, Any]:
        job = self.reads.job_name(query["ResourceArn"])
        if job is None:
            return _refused(f"No training job {query['ResourceArn']} was found.")
        period, axis = query["Period"], query["XAxisType"]
        if axis == "IterationNumber" and period != "IterationNumber":
            return _refused("An XAxisType of IterationNumber needs a Period of IterationNumber.")
        start = None if query.get("Start") is None else query["Start"] * 1000
        end = None if query.get("End") is None else query["End"] * 1000
        rows = self.reads.values(Series(query["MetricName"], JOB_DIMENSION, job), start, end)
        stat = query["MetricStat"]
        if period == "IterationNumber":
            # Every value is a point of its own: its place in the log, or its time.
            points = [
                (index if axis == "IterationNumber" else timestamp // 1000, value)
                for index, (timestamp, value) in enumerate(rows)
            ]
            return _complete([x for x, _ in points], [_statistic(stat, [v]) for _, v in points])
        seconds = PERIOD_SECONDS[period]
        groups: dict[int, list[float]] = {}
        for timestamp, value in rows:
            groups.setdefault(timestamp // 1000 // seconds * seconds, []).append(value)
        ordered = sorted(groups)
        return _complete(ordered, [_statistic(stat, groups[x]) for x in ordered])


def _statistic(name: str, group: list[float]) -> float:
    if name == "Min":
        return min(group)
    if name == "Max":
        return max(group)
    if name == "Avg":
        return math.fsum(group) / len(group)
    if name == "Count":
        return float(len(group))
    if name == "StdDev":
        return statistics.pstdev(group)
    return group[-1]  # Last


def _complete(x: list[int], y: list[float]) -> dict[str, Any]:
    return {"Status": "Complete", "XAxisValues": x, "MetricValues": y}


def _refused(message: str) -> dict[str, Any]:
    return {"Status": "ValidationError", "Message": message, "XAxisValues": [], "MetricValues": []}
