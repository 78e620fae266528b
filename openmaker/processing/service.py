"""Processing jobs as the SageMaker API sees them: create, describe, list, stop. They wait
for capacity, start, are swept when their worker is lost, keep their tags and logs through the
shared job machinery (openmaker/jobs/), as training jobs do."""

from __future__ import annotations

import copy
import threading
from typing import Any

from openmaker.jobs import capacity, queue, recovery
from openmaker.jobs.db import ProcessingJobRecord, sessions, writer_sessions
from openmaker.jobs.executor import Executor, executor_for
from openmaker.jobs.listing import search
from openmaker.jobs.service import Stopping, current, insert, stop_job
from openmaker.processing import status
from openmaker.processing.checks import check_create_processing_job
from openmaker.processing.describe import describe, summary
from openmaker.processing.kind import PROCESSING
from openmaker.processing.query import ProcessingQuery
from openmaker.processing.status import ProcessingJobStatus
from openmaker.resources import KINDS
from openmaker.settings import Settings
from openmaker.shapes.arn import resource_arn
from openmaker.shapes.errors import ResourceNotFound
from openmaker.shapes.locations import LocalPaths

Job = ProcessingJobRecord


class ProcessingJobs:
    def __init__(
        self,
        settings: Settings,
        executor: Executor | None = None,
        local: LocalPaths | None = None,
    ) -> None:
        self.settings = settings
        self.local = local or LocalPaths.anywhere()
        self.sessions = sessions(settings)
        self.writers = writer_sessions(settings)
        self.executor = executor or executor_for(settings)
        # What may start a worker does so one at a time (the executor keeps a spare).
        self._starting = threading.RLock()

    def create(self, request: dict[str, Any]) -> dict[str, str]:
        check_create_processing_job(request, self.local)
        capacity.check_can_fit(
            PROCESSING.instances(request), capacity.machine(self.settings), PROCESSING.noun
        )
        request = copy.deepcopy(request)
        name = request["ProcessingJobName"]
        settings = self.settings
        arn = resource_arn("processing-job", name, settings.region, settings.account_id)
        at = status.now()
        job = Job(
            name=name,
            arn=arn,
            request=request,
            status=ProcessingJobStatus.IN_PROGRESS,
            secondary_status=status.STARTING,
            transitions=[],
            creation_time=at,
            last_modified_time=at,
        )
        status.enter(job, status.STARTING, "Preparing the instances for processing")
        with self._starting:
            insert(self.writers, PROCESSING, job, request.get("Tags") or [])
            queue.save_launch(settings, PROCESSING.local_key(name))
            queue.start_ready(settings, self.executor, KINDS)
        return {"ProcessingJobArn": arn}

    def describe(self, name: str) -> dict[str, Any]:
        return describe(self._get(name))

    def search(self, query: ProcessingQuery) -> tuple[list[dict[str, Any]], str | None]:
        """One page of ListProcessingJobs: the summaries and the NextToken, if more remain."""
        return search(self.sessions, query, summary)

    def stop(self, name: str) -> None:
        stop_job(self.writers, self.executor, PROCESSING, _STOPPING, name, self._start_waiting)

    def _start_waiting(self) -> None:
        with self._starting:  # one at a time
            queue.start_ready(self.settings, self.executor, KINDS)

    def _get(self, name: str) -> Job:
        return current(self.sessions, Job, status.ENDED, name, _not_found, self._recheck)

    def _recheck(self, name: str) -> None:
        with self._starting:
            recovery.check(self.settings, self.executor, KINDS, PROCESSING, name)


def _not_found(name: str) -> ResourceNotFound:
    return ResourceNotFound(f"Requested resource not found: processing job {name}")


def _mark_stopping(job: Job) -> None:
    job.status = ProcessingJobStatus.STOPPING
    status.enter(job, "Stopping")


_STOPPING: Stopping[Job] = Stopping(
    waiting=status.waiting,
    stopped=lambda job: status.finish(job, ProcessingJobStatus.STOPPED),
    stopping=_mark_stopping,
    not_found=_not_found,
)
