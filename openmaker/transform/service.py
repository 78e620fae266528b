"""Transform jobs as the SageMaker API sees them: CreateTransformJob, DescribeTransformJob,
ListTransformJobs, StopTransformJob.

A created job waits in the shared queue (openmaker/jobs/queue.py) for the capacity its
`TransformResources` ask for, then runs in a worker started by the executor
(openmaker/transform/worker.py).
"""

from __future__ import annotations

import copy
import threading
from typing import Any

from openmaker.jobs import capacity, queue, recovery
from openmaker.jobs.db import TransformJobRecord, sessions, writer_sessions
from openmaker.jobs.executor import Executor, executor_for
from openmaker.jobs.listing import search
from openmaker.jobs.service import Stopping, current, insert, stop_job
from openmaker.resources import KINDS
from openmaker.serving.clock import as_utc, now
from openmaker.serving.models import Models
from openmaker.settings import Settings
from openmaker.shapes.arn import resource_arn
from openmaker.shapes.errors import ResourceNotFound
from openmaker.transform import status
from openmaker.transform.checks import check_create_transform_job, check_transform_model
from openmaker.transform.kind import TRANSFORM, enter, finish
from openmaker.transform.query import PAGES, TransformQuery

# What DescribeTransformJob returns of the request, as given.
_DESCRIBED = (
    "ModelName",
    "MaxConcurrentTransforms",
    "ModelClientConfig",
    "MaxPayloadInMB",
    "BatchStrategy",
    "Environment",
    "TransformInput",
    "TransformOutput",
    "DataCaptureConfig",
    "TransformResources",
    "DataProcessing",
    "ExperimentConfig",
)


class TransformJobs:
    def __init__(
        self,
        settings: Settings,
        models: Models,
        executor: Executor | None = None,
        starting: threading.RLock | None = None,
    ) -> None:
        self.settings, self.models = settings, models
        self.sessions, self.writers = sessions(settings), writer_sessions(settings)
        self.executor = executor or executor_for(settings)
        # Shared with whatever else starts workers through this executor (one at a time).
        self._starting = starting or threading.RLock()

    def arn(self, name: str) -> str:
        return resource_arn("transform-job", name, self.settings.region, self.settings.account_id)

    def create(self, request: dict[str, Any]) -> dict[str, str]:
        check_create_transform_job(request)
        model = self.models.get(request["ModelName"]).request
        check_transform_model(request["ModelName"], model)
        kind = TRANSFORM
        capacity.check_can_fit(kind.instances(request), capacity.machine(self.settings), kind.noun)
        name = request["TransformJobName"]
        arn = self.arn(name)
        at = now()
        job = TransformJobRecord(
            name=name,
            arn=arn,
            request={k: copy.deepcopy(v) for k, v in request.items() if k != "Tags"},
            status=status.IN_PROGRESS,
            secondary_status=status.STARTING,
            transitions=[],
            creation_time=at,
            last_modified_time=at,
            model=model,
        )
        enter(job, status.STARTING)
        insert(self.writers, kind, job, request.get("Tags") or [])
        with self._starting:
            queue.save_launch(self.settings, TRANSFORM.local_key(name))
            queue.start_ready(self.settings, self.executor, KINDS)
        return {"TransformJobArn": arn}

    def describe(self, name: str) -> dict[str, Any]:
        job = self._get(name)
        result: dict[str, Any] = {
            "TransformJobName": job.name,
            "TransformJobArn": job.arn,
            "TransformJobStatus": job.status,
            "CreationTime": as_utc(job.creation_time),
        }
        result.update({k: job.request[k] for k in _DESCRIBED if k in job.request})
        if job.failure_reason:
            result["FailureReason"] = job.failure_reason
        if job.transform_start_time is not None:
            result["TransformStartTime"] = as_utc(job.transform_start_time)
        if job.transform_end_time is not None:
            result["TransformEndTime"] = as_utc(job.transform_end_time)
        return result

    def list(self, params: dict[str, Any]) -> dict[str, Any]:
        summaries, token = search(self.sessions, TransformQuery.of(params), _summary)
        result: dict[str, Any] = {"TransformJobSummaries": summaries}
        if token:
            result[PAGES.output_token] = token
        return result

    def stop(self, name: str) -> None:
        stop_job(self.writers, self.executor, TRANSFORM, _STOPPING, name, self._start_waiting)

    def _start_waiting(self) -> None:
        with self._starting:  # one at a time
            queue.start_ready(self.settings, self.executor, KINDS)

    def _get(self, name: str) -> TransformJobRecord:
        return current(
            self.sessions, TransformJobRecord, status.ENDED, name, _not_found, self._recheck
        )

    def _recheck(self, name: str) -> None:
        with self._starting:
            recovery.check(self.settings, self.executor, KINDS, TRANSFORM, name)


def _not_found(name: str) -> ResourceNotFound:
    return ResourceNotFound(f"Could not find requested job with name {name}")


def _mark_stopping(job: TransformJobRecord) -> None:
    job.status = status.STOPPING
    job.last_modified_time = now()


_STOPPING: Stopping[TransformJobRecord] = Stopping(
    waiting=lambda job: job.worker is None,  # waiting for capacity
    stopped=lambda job: finish(job, status.STOPPED, None),
    stopping=_mark_stopping,
    not_found=_not_found,
)


def _summary(job: TransformJobRecord) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "TransformJobName": job.name,
        "TransformJobArn": job.arn,
        "CreationTime": as_utc(job.creation_time),
        "LastModifiedTime": as_utc(job.last_modified_time),
        "TransformJobStatus": job.status,
    }
    if job.transform_end_time is not None:
        summary["TransformEndTime"] = as_utc(job.transform_end_time)
    if job.failure_reason:
        summary["FailureReason"] = job.failure_reason
    return summary
