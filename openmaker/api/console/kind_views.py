"""The console's pages for processing and batch transform jobs, as JSON-ready data: a table of
each kind, a job's description and its log tail, read through each kind's own service (what
ListProcessingJobs, DescribeTransformJob, ... answer from) and the CloudWatch Logs queries; and
a job's stop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from openmaker.api.console import log_tail
from openmaker.api.console.paging import check_page, list_params
from openmaker.api.console.shown import ms, plain
from openmaker.jobs.cloudwatch import LogQueries
from openmaker.processing.kind import LOG_GROUP as PROCESSING_LOGS
from openmaker.processing.query import ProcessingQuery
from openmaker.processing.service import ProcessingJobs
from openmaker.transform.kind import LOG_GROUP as TRANSFORM_LOGS
from openmaker.transform.service import TransformJobs

STATUSES = ("InProgress", "Completed", "Failed", "Stopping", "Stopped")
Listing = Callable[[dict[str, Any]], tuple[list[dict[str, Any]], str | None]]


@dataclass(frozen=True)
class JobKind:
    """What differs between the kinds: their members' prefix, where their instances are
    described, their log group, how they list."""

    prefix: str  # "Processing": ProcessingJobName, ProcessingStartTime, ...
    resources: Callable[[dict[str, Any]], dict[str, Any]]
    log_group: str
    sorts: tuple[str, ...]
    listing: Listing
    describe: Callable[[str], dict[str, Any]]
    stop: Callable[[str], None]


class KindViews:
    def __init__(self, kind: JobKind, logs: LogQueries) -> None:
        self.kind, self.logs = kind, logs

    def table(
        self,
        name: str | None,
        status: str | None,
        sort: str,
        descending: bool,
        limit: int,
        token: str | None,
    ) -> dict[str, Any]:
        """One page of the kind's jobs table, and the token of the next page."""
        check_page(status, STATUSES, sort, self.kind.sorts, limit)
        params = list_params(name, status, sort, descending, limit, token)
        summaries, following = self.kind.listing(params)
        named = f"{self.kind.prefix}JobName"
        return {"jobs": [self._row(s[named]) for s in summaries], "next": following}

    def _row(self, name: str) -> dict[str, Any]:
        described = self.kind.describe(name)
        resources = self.kind.resources(described)
        prefix = self.kind.prefix
        return {
            "name": name,
            "status": described[f"{prefix}JobStatus"],
            "instanceType": resources.get("InstanceType"),
            "instanceCount": resources.get("InstanceCount"),
            "created": ms(described["CreationTime"]),
            "started": ms(described.get(f"{prefix}StartTime")),
            "ended": ms(described.get(f"{prefix}EndTime")),
            "failureReason": described.get("FailureReason"),
        }

    def job(self, name: str) -> dict[str, Any]:
        """The job's description (times as epoch ms) and its hosts' log streams."""
        described = self.kind.describe(name)
        return {"job": plain(described), "hosts": self._hosts(name)}

    def stop(self, name: str) -> dict[str, Any]:
        """Stop the job, as Stop*Job does (the page asked the person first)."""
        self.kind.stop(name)
        return {"stopping": name}

    def logs_of(self, name: str, after: int) -> dict[str, Any]:
        self.kind.describe(name)  # an unknown job is refused, not an empty log
        streams = log_tail.stream_names(self.logs, self.kind.log_group, f"{name}/")
        return log_tail.tail(self.logs, self.kind.log_group, streams, after, f"{name}/")

    def _hosts(self, name: str) -> list[str]:
        streams = log_tail.stream_names(self.logs, self.kind.log_group, f"{name}/")
        return [s.removeprefix(f"{name}/") for s in streams]


def processing_kind(jobs: ProcessingJobs) -> JobKind:
    return JobKind(
        prefix="Processing",
        resources=lambda d: dict(d.get("ProcessingResources", {}).get("ClusterConfig", {})),
        log_group=PROCESSING_LOGS,
        sorts=("CreationTime", "Name", "Status"),
        listing=lambda params: jobs.search(ProcessingQuery.of(params)),
        describe=jobs.describe,
        stop=jobs.stop,
    )


def transform_kind(jobs: TransformJobs) -> JobKind:
    def listing(params: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
        found = jobs.list(params)
        return list(found["TransformJobSummaries"]), found.get("NextToken")

    return JobKind(
        prefix="Transform",
        resources=lambda d: dict(d.get("TransformResources", {})),
        log_group=TRANSFORM_LOGS,
        sorts=("CreationTime", "Name", "Status"),
        listing=listing,
        describe=jobs.describe,
        stop=jobs.stop,
    )
