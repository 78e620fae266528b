"""The operations the server answers, by service: request members in, response members out.

Each handler gets the request as Python values (already checked against the operation's input
shape) and returns the output shape's members; the protocol layer does the rest.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from openmaker.jobs import recovery
from openmaker.jobs.cloudwatch import GROUPS, LogQueries, Window
from openmaker.jobs.query import JobQuery
from openmaker.jobs.search import search
from openmaker.jobs.service import TrainingJobs
from openmaker.jobs.tags import Tags
from openmaker.jobs.update import update_training_job
from openmaker.settings import Settings
from openmaker.spec import LocalPaths

Handler = Callable[[dict[str, Any]], dict[str, Any]]
SWEEP_SECONDS = 5.0
log = logging.getLogger("openmaker.api")


class Backend:
    """What the handlers work on; one per server process."""

    def __init__(self, settings: Settings) -> None:
        # A request through the API names local paths only where the machine's owner allows.
        local = LocalPaths.under(settings.file_roots, settings.home)
        self.jobs = TrainingJobs(settings, local=local)
        self.tags = Tags(self.jobs.sessions, self.jobs.writers)
        self.logs = LogQueries(self.jobs.sessions, settings.region, settings.account_id)
        # The executor keeps one warm worker for the next job: one submission at a time.
        self.create_lock = threading.Lock()
        self._stopped = threading.Event()

    def watch(self, every: float = SWEEP_SECONDS) -> None:
        """Sweep the jobs now and then in a background thread: a lost worker is noticed, and
        waiting jobs start, even when no client asks about them."""

        def loop() -> None:
            while not self._stopped.wait(every):
                try:
                    with self.create_lock:
                        recovery.sweep(self.jobs.settings, self.jobs.executor)
                except Exception:  # the next sweep tries again; the server goes on
                    log.exception("sweeping the jobs failed")

        threading.Thread(target=loop, name="openmaker-sweep", daemon=True).start()

    def close(self) -> None:
        self._stopped.set()

    def sagemaker(self) -> dict[str, Handler]:
        return {
            "CreateTrainingJob": self._create_training_job,
            "DescribeTrainingJob": lambda p: self.jobs.describe(p["TrainingJobName"]),
            "ListTrainingJobs": self._list_training_jobs,
            "StopTrainingJob": self._stop_training_job,
            "UpdateTrainingJob": lambda p: {
                "TrainingJobArn": update_training_job(self.jobs.writers, p)
            },
            "Search": lambda p: search(self.jobs.sessions, p),
            "AddTags": lambda p: {"Tags": self.tags.add(p["ResourceArn"], p["Tags"])},
            "ListTags": lambda p: self.tags.list(
                p["ResourceArn"], p.get("MaxResults", 50), p.get("NextToken")
            ),
            "DeleteTags": self._delete_tags,
        }

    def logs_operations(self) -> dict[str, Handler]:
        return {
            "DescribeLogGroups": self._describe_log_groups,
            "DescribeLogStreams": lambda p: self.logs.describe_log_streams(
                _group(p),
                p.get("logStreamNamePrefix"),
                p.get("orderBy", "LogStreamName"),
                p.get("descending", False),
                p.get("limit", 50),
                p.get("nextToken"),
            ),
            "GetLogEvents": lambda p: self.logs.get_log_events(
                _group(p),
                p["logStreamName"],
                Window(p.get("startTime"), p.get("endTime")),
                p.get("limit", 10000),
                p.get("nextToken"),
                p.get("startFromHead", False),
            ),
            "FilterLogEvents": lambda p: self.logs.filter_log_events(
                _group(p),
                p.get("logStreamNames"),
                p.get("logStreamNamePrefix"),
                Window(p.get("startTime"), p.get("endTime")),
                p.get("filterPattern"),
                p.get("limit", 10000),
                p.get("nextToken"),
            ),
        }

    def _create_training_job(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.create_lock:
            return self.jobs.create(params)

    def _list_training_jobs(self, params: dict[str, Any]) -> dict[str, Any]:
        query = JobQuery(
            status=params.get("StatusEquals"),
            name_contains=params.get("NameContains"),
            created_after=params.get("CreationTimeAfter"),
            created_before=params.get("CreationTimeBefore"),
            modified_after=params.get("LastModifiedTimeAfter"),
            modified_before=params.get("LastModifiedTimeBefore"),
            warm_pool_status=params.get("WarmPoolStatusEquals"),
            sort_by=params.get("SortBy", "CreationTime"),
            descending=params.get("SortOrder", "Ascending") == "Descending",
            limit=params.get("MaxResults", 10),
            token=params.get("NextToken"),
        )
        summaries, token = self.jobs.search(query)
        result: dict[str, Any] = {"TrainingJobSummaries": summaries}
        if token:
            result["NextToken"] = token
        return result

    def _stop_training_job(self, params: dict[str, Any]) -> dict[str, Any]:
        self.jobs.stop(params["TrainingJobName"])
        return {}

    def _delete_tags(self, params: dict[str, Any]) -> dict[str, Any]:
        self.tags.delete(params["ResourceArn"], params["TagKeys"])
        return {}

    def _describe_log_groups(self, params: dict[str, Any]) -> dict[str, Any]:
        prefix = params.get("logGroupNamePrefix") or ""
        groups = [
            {"logGroupName": g, "creationTime": 0, "storedBytes": 0}
            for g in GROUPS
            if g.startswith(prefix)
        ]
        return {"logGroups": groups}


def _group(params: dict[str, Any]) -> str:
    """`logGroupName`, or `logGroupIdentifier` (a name or an ARN naming one)."""
    if params.get("logGroupName"):
        return str(params["logGroupName"])
    identifier = str(params.get("logGroupIdentifier") or "")
    return identifier.split(":log-group:", 1)[-1].removesuffix(":*")
