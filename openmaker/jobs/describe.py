"""A stored job in the shapes of DescribeTrainingJob and ListTrainingJobs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from openmaker.jobs.db import TrainingJob
from openmaker.jobs.state import as_utc
from openmaker.spec.model import operation_model

# Members computed from the job's state; every other member of the output shape that the
# request holds (StoppingCondition included, with its default) is copied from the request.
_COMPUTED = {
    "TrainingJobName",
    "TrainingJobArn",
    "ModelArtifacts",
    "TrainingJobStatus",
    "SecondaryStatus",
    "FailureReason",
    "CreationTime",
    "TrainingStartTime",
    "TrainingEndTime",
    "LastModifiedTime",
    "SecondaryStatusTransitions",
    "FinalMetricDataList",
    "TrainingTimeInSeconds",
    "BillableTimeInSeconds",
}


def describe(job: TrainingJob) -> dict[str, Any]:
    output = operation_model("DescribeTrainingJob").output_shape
    assert output is not None  # the model describes the response
    output_members = output.members
    request = job.request
    result: dict[str, Any] = {
        "TrainingJobName": job.name,
        "TrainingJobArn": job.arn,
        "TrainingJobStatus": job.status,
        "SecondaryStatus": job.secondary_status,
        "CreationTime": as_utc(job.creation_time),
        "LastModifiedTime": as_utc(job.last_modified_time),
        "SecondaryStatusTransitions": [_transition(t) for t in job.transitions or []],
    }
    for member, value in request.items():
        if member in output_members and member not in _COMPUTED:
            result[member] = value
    for flag in (
        "EnableNetworkIsolation",
        "EnableInterContainerTrafficEncryption",
        "EnableManagedSpotTraining",
    ):
        result.setdefault(flag, False)
    if job.model_artifacts:
        # Only artifacts that were written are named: until then (and for a job stopped or
        # failed before its outputs were uploaded) AWS leaves the member out too.
        result["ModelArtifacts"] = {"S3ModelArtifacts": job.model_artifacts}
    if job.failure_reason:
        result["FailureReason"] = job.failure_reason
    start, end = as_utc(job.training_start_time), as_utc(job.training_end_time)
    if start:
        result["TrainingStartTime"] = start
    if end:
        result["TrainingEndTime"] = end
        if start:
            seconds = int((end - start).total_seconds())
            result["TrainingTimeInSeconds"] = max(seconds, 1)
            count = int(request["ResourceConfig"].get("InstanceCount", 1))
            result["BillableTimeInSeconds"] = max(seconds, 1) * count
    return result


def summary(job: TrainingJob) -> dict[str, Any]:
    item: dict[str, Any] = {
        "TrainingJobName": job.name,
        "TrainingJobArn": job.arn,
        "CreationTime": as_utc(job.creation_time),
        "TrainingJobStatus": job.status,
        "SecondaryStatus": job.secondary_status,
        "LastModifiedTime": as_utc(job.last_modified_time),
    }
    if job.training_end_time:
        item["TrainingEndTime"] = as_utc(job.training_end_time)
    return item


def _transition(entry: dict[str, str]) -> dict[str, Any]:
    item: dict[str, Any] = {
        "Status": entry["Status"],
        "StartTime": datetime.fromisoformat(entry["StartTime"]),
        "StatusMessage": entry["StatusMessage"],
    }
    if entry.get("EndTime"):
        item["EndTime"] = datetime.fromisoformat(entry["EndTime"])
    return item
