"""What each console page shows, as JSON-ready data, read through the services the API answers
from (training jobs, their logs and metrics, the machine's capacity): never the database.

Everything a job's code or its requester wrote (names, log lines, hyperparameters, failure
reasons) goes out as data; the page puts it on screen as text.
"""

from __future__ import annotations

from typing import Any

from openmaker.api.console.paging import check_page
from openmaker.api.console.shown import ms as _ms
from openmaker.api.console.shown import plain as _plain
from openmaker.instances import GIB
from openmaker.jobs.capacity import machine
from openmaker.training.metric_reads import MetricReads
from openmaker.training.metric_series import HOST_DIMENSION, SYSTEM_METRICS, Series
from openmaker.training.query import SORT_COLUMNS, JobQuery
from openmaker.training.service import TrainingJobs
from openmaker.training.status import TrainingJobStatus

LOG_BATCH = 1000


class ConsoleViews:
    def __init__(self, jobs: TrainingJobs, metrics: MetricReads) -> None:
        self.jobs = jobs
        self.metrics = metrics

    def job_table(
        self,
        name: str | None,
        status: str | None,
        sort: str,
        descending: bool,
        limit: int,
        token: str | None,
    ) -> dict[str, Any]:
        """One page of the jobs table: a row per job, and the token of the next page."""
        statuses = [s.value for s in TrainingJobStatus]
        check_page(status, statuses, sort, SORT_COLUMNS, limit)
        query = JobQuery(
            status=status or None,
            name_contains=name or None,
            sort_by=sort,
            descending=descending,
            limit=limit,
            token=token or None,
        )
        summaries, next_token = self.jobs.search(query)
        return {"jobs": [self._row(s) for s in summaries], "next": next_token}

    def _row(self, summary: dict[str, Any]) -> dict[str, Any]:
        described = self.jobs.describe(summary["TrainingJobName"])
        resources = described.get("ResourceConfig", {})
        return {
            "name": described["TrainingJobName"],
            "status": described["TrainingJobStatus"],
            "secondary": described.get("SecondaryStatus"),
            "instanceType": resources.get("InstanceType"),
            "instanceCount": resources.get("InstanceCount"),
            "created": _ms(described["CreationTime"]),
            "started": _ms(described.get("TrainingStartTime")),
            "ended": _ms(described.get("TrainingEndTime")),
            "failureReason": described.get("FailureReason"),
        }

    def job(self, name: str) -> dict[str, Any]:
        """DescribeTrainingJob's answer (times as epoch ms), the hosts, the metric names."""
        described = self.jobs.describe(name)
        count = int(described.get("ResourceConfig", {}).get("InstanceCount") or 1)
        definitions = described.get("AlgorithmSpecification", {}).get("MetricDefinitions", [])
        return {
            "job": _plain(described),
            "hosts": [f"algo-{i}" for i in range(1, count + 1)],
            "metricNames": [d["Name"] for d in definitions],
            "logStreams": self.jobs.log_streams(name),
        }

    def logs(self, name: str, after: int) -> dict[str, Any]:
        """The job's log lines after the record `after`, oldest first (at most LOG_BATCH)."""
        self.jobs.describe(name)  # an unknown job is ResourceNotFound, not an empty log
        events = self.jobs.log_events(name, after, LOG_BATCH)
        return {
            "events": [
                {
                    "id": e.id,
                    "host": _host(e.stream, name),
                    "timestamp": e.timestamp,
                    "message": e.message,
                }
                for e in events
            ],
            "last": events[-1].id if events else after,
        }

    def metrics_of(self, name: str) -> dict[str, Any]:
        """Every value of the job's MetricDefinitions metrics and its hosts' utilization, per
        metric and host: {metric: {host: [[ms, value], ...]}}."""
        shown = self.job(name)
        found: dict[str, dict[str, dict[str, list[tuple[int, float]]]]] = {
            "metrics": {},
            "system": {},
        }
        for kind, names in (("metrics", shown["metricNames"]), ("system", SYSTEM_METRICS)):
            for metric in names:
                for host in shown["hosts"]:
                    series = Series(metric, HOST_DIMENSION, f"{name}/{host}")
                    if values := self.metrics.values(series, None, None):
                        found[kind].setdefault(metric, {})[host] = values
        return found

    def stop(self, name: str) -> dict[str, Any]:
        self.jobs.stop(name)
        return {"stopping": name}

    def machine(self) -> dict[str, Any]:
        """The machine's capacity, and the jobs under way: those running, those waiting."""
        offered = machine(self.jobs.settings)
        running: list[dict[str, Any]] = []
        waiting: list[dict[str, Any]] = []
        for status in (TrainingJobStatus.IN_PROGRESS, TrainingJobStatus.STOPPING):
            for summary in self.jobs.list(status=status):
                row = self._row(summary)
                (waiting if row["secondary"] in ("Pending", "Restarting") else running).append(row)
        return {
            # Under "ray" the page also asks /cluster for the nodes (cluster_view.py).
            "executor": self.jobs.settings.executor,
            "capacity": {
                "policy": offered.policy,
                "cpus": offered.slots,
                "memoryGiB": round(offered.memory / GIB, 2),
                "gpus": len(offered.gpu_ids),
            },
            "running": running,
            "pending": sorted(waiting, key=lambda row: row["created"] or 0),
        }


def _host(stream: str, job: str) -> str:
    """`algo-1` of the stream `<job>/algo-1-<epoch>`."""
    rest = stream.removeprefix(f"{job}/")
    head, _, tail = rest.rpartition("-")
    return head if head and tail.isdigit() else rest
