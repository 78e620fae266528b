"""A stored job in the shapes of DescribeTrainingJob, ListTrainingJobs and Search.

Member names come from the output shapes of botocore's model. What AWS fills in for a member
the request left out (its defaults) is kept here, in one place: the `sagemaker` SDK indexes
several of them without looking first (`OutputDataConfig.KmsKeyId` in `Estimator.attach`).
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

from botocore.model import StructureShape

from openmaker.jobs.db import TrainingJob
from openmaker.shapes.model import operation_model, shape
from openmaker.training import state
from openmaker.training.state import as_utc

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
    "WarmPoolStatus",
    "ProfilingStatus",
}

# What DescribeTrainingJob shows for members the request left out, by structure.
_JOB_DEFAULTS: dict[str, Any] = {
    "EnableNetworkIsolation": False,
    "EnableInterContainerTrafficEncryption": False,
    "EnableManagedSpotTraining": False,
}
_ALGORITHM_DEFAULTS: dict[str, Any] = {"EnableSageMakerMetricsTimeSeries": False}
_OUTPUT_DEFAULTS: dict[str, Any] = {"KmsKeyId": "", "CompressionType": "GZIP"}
_CHANNEL_DEFAULTS: dict[str, Any] = {"CompressionType": "None", "RecordWrapperType": "None"}
_S3_SOURCE_DEFAULTS: dict[str, Any] = {"S3DataDistributionType": "FullyReplicated"}
# SageMaker's default volume when a request names none (botocore does not require one).
DEFAULT_VOLUME_GB = 30


def describe(job: TrainingJob) -> dict[str, Any]:
    """DescribeTrainingJob's members for `job` (FinalMetricDataList is the caller's)."""
    output = operation_model("DescribeTrainingJob").output_shape
    assert output is not None  # the model describes the response
    result = _document(job, set(output.members))
    result["ProfilingStatus"] = profiling_status(job.request)
    return result


def search_record(job: TrainingJob, tags: list[dict[str, str]]) -> dict[str, Any]:
    """The job as Search's `TrainingJob` shape: Describe's members that shape has, and tags."""
    record = shape("TrainingJob")
    assert isinstance(record, StructureShape)
    result = _document(job, set(record.members))
    result["Tags"] = tags
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
    if (pool := warm_pool_status(job.status, job.request)) is not None:
        item["WarmPoolStatus"] = pool
    return item


def profiling_status(request: dict[str, Any]) -> str:
    """Enabled once a ProfilerConfig names where profiling goes and does not disable it."""
    config = request.get("ProfilerConfig") or {}
    enabled = bool(config.get("S3OutputPath")) and not config.get("DisableProfiler", False)
    return "Enabled" if enabled else "Disabled"


def warm_pool_status(status: str, request: dict[str, Any]) -> dict[str, Any] | None:
    """A job that asked for a warm pool (`KeepAlivePeriodInSeconds`) gets one on AWS once it
    ends. openmaker keeps no instances between jobs: the pool is over as soon as it would
    begin, and nothing is billed for it."""
    if "KeepAlivePeriodInSeconds" not in request.get("ResourceConfig", {}):
        return None
    if status not in state.TERMINAL:
        return None
    return {"Status": "Terminated", "ResourceRetainedBillableTimeInSeconds": 0}


def _document(job: TrainingJob, members: set[str]) -> dict[str, Any]:
    request = _with_defaults(job.request)
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
        if member in members and member not in _COMPUTED:
            result[member] = value
    if job.model_artifacts:
        # Only artifacts that were written are named: until then (and for a job stopped or
        # failed before its outputs were uploaded) AWS leaves the member out too.
        result["ModelArtifacts"] = {"S3ModelArtifacts": job.model_artifacts}
    if job.failure_reason:
        result["FailureReason"] = job.failure_reason
    if (pool := warm_pool_status(job.status, job.request)) is not None:
        result["WarmPoolStatus"] = pool
    start, end = as_utc(job.training_start_time), as_utc(job.training_end_time)
    if start:
        result["TrainingStartTime"] = start
    if end:
        result["TrainingEndTime"] = end
        if start:
            seconds = max(int((end - start).total_seconds()), 1)
            result["TrainingTimeInSeconds"] = seconds
            # Per instance, as AWS counts it: the sagemaker SDK multiplies by the instance
            # count itself when it reports spot savings.
            result["BillableTimeInSeconds"] = seconds
    return result


def _with_defaults(request: dict[str, Any]) -> dict[str, Any]:
    """The request with what AWS fills in where it is left out; the stored one is unchanged."""
    filled = copy.deepcopy(request)
    for member, value in _JOB_DEFAULTS.items():
        filled.setdefault(member, value)
    _fill(filled.get("AlgorithmSpecification"), _ALGORITHM_DEFAULTS)
    _fill(filled.get("OutputDataConfig"), _OUTPUT_DEFAULTS)
    _fill(filled.get("ResourceConfig"), {"VolumeSizeInGB": DEFAULT_VOLUME_GB})
    for channel in filled.get("InputDataConfig") or []:
        _fill(channel, _CHANNEL_DEFAULTS)
        _fill(channel.get("DataSource", {}).get("S3DataSource"), _S3_SOURCE_DEFAULTS)
    return filled


def _fill(structure: dict[str, Any] | None, defaults: dict[str, Any]) -> None:
    if structure is not None:
        for member, value in defaults.items():
            structure.setdefault(member, value)


def _transition(entry: dict[str, str]) -> dict[str, Any]:
    item: dict[str, Any] = {
        "Status": entry["Status"],
        "StartTime": datetime.fromisoformat(entry["StartTime"]),
        "StatusMessage": entry["StatusMessage"],
    }
    if entry.get("EndTime"):
        item["EndTime"] = datetime.fromisoformat(entry["EndTime"])
    return item
