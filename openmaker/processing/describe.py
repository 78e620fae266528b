"""A stored processing job in the shapes of DescribeProcessingJob and ListProcessingJobs."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from openmaker.jobs.db import ProcessingJobRecord
from openmaker.shapes.model import operation_model

# Members computed from the job's state; the others the output shape has come from the request.
_COMPUTED = {
    "ProcessingJobName",
    "ProcessingJobArn",
    "ProcessingJobStatus",
    "ExitMessage",
    "FailureReason",
    "CreationTime",
    "ProcessingStartTime",
    "ProcessingEndTime",
    "LastModifiedTime",
}


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def describe(job: ProcessingJobRecord) -> dict[str, Any]:
    output = operation_model("DescribeProcessingJob").output_shape
    assert output is not None  # the model describes the response
    result: dict[str, Any] = {
        name: copy.deepcopy(value)
        for name, value in job.request.items()
        if name in output.members and name not in _COMPUTED
    }
    result.update(
        ProcessingJobName=job.name,
        ProcessingJobArn=job.arn,
        ProcessingJobStatus=job.status,
        CreationTime=_utc(job.creation_time),
        LastModifiedTime=_utc(job.last_modified_time),
    )
    optional = {
        "ExitMessage": job.exit_message,
        "FailureReason": job.failure_reason,
        "ProcessingStartTime": _utc(job.processing_start_time),
        "ProcessingEndTime": _utc(job.processing_end_time),
    }
    result.update({name: value for name, value in optional.items() if value is not None})
    return result


def summary(job: ProcessingJobRecord) -> dict[str, Any]:
    item: dict[str, Any] = {
        "ProcessingJobName": job.name,
        "ProcessingJobArn": job.arn,
        "CreationTime": _utc(job.creation_time),
        "LastModifiedTime": _utc(job.last_modified_time),
        "ProcessingJobStatus": job.status,
    }
    if job.processing_end_time is not None:
        item["ProcessingEndTime"] = _utc(job.processing_end_time)
    if job.failure_reason:
        item["FailureReason"] = job.failure_reason
    if job.exit_message:
        item["ExitMessage"] = job.exit_message
    return item
