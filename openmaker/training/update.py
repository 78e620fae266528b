"""UpdateTrainingJob: what a running job may still change, checked and stored as AWS does.

openmaker neither profiles nor offers remote debugging, and keeps no warm pool; the settings
are still kept, so that DescribeTrainingJob (and the SDK reading it) sees what was asked.
"""

from __future__ import annotations

import copy
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from openmaker.jobs.db import TrainingJob
from openmaker.shapes.errors import ResourceNotFound, ValidationException
from openmaker.training import state
from openmaker.training.describe import warm_pool_status

# The only sampling intervals SageMaker's profiler takes.
PROFILING_INTERVALS_MS = (100, 200, 500, 1000, 5000, 60000)
_UPDATABLE = ("ProfilerConfig", "ProfilerRuleConfigurations", "ResourceConfig", "RemoteDebugConfig")


def update_training_job(writers: sessionmaker[Session], params: dict[str, Any]) -> str:
    """Apply `params` (checked against the input shape) to the job; its ARN."""
    name = params["TrainingJobName"]
    if not any(member in params for member in _UPDATABLE):
        raise ValidationException(
            "UpdateTrainingJob needs something to update: ProfilerConfig, "
            "ProfilerRuleConfigurations, ResourceConfig or RemoteDebugConfig"
        )
    with writers() as session:
        job = session.get(TrainingJob, name)
        if job is None:
            raise ResourceNotFound(f"Requested resource not found: training job {name}")
        request = copy.deepcopy(job.request)
        if "ResourceConfig" in params:
            _update_warm_pool(job, request, params["ResourceConfig"])
        others = [m for m in _UPDATABLE if m in params and m != "ResourceConfig"]
        if others and job.status != state.IN_PROGRESS:
            raise ValidationException(
                f"{', '.join(others)}: the training job {name} is in status {job.status}; "
                "only a job in progress can change them"
            )
        if "ProfilerConfig" in params:
            request["ProfilerConfig"] = _profiler_config(
                request.get("ProfilerConfig") or {}, params["ProfilerConfig"]
            )
        if "ProfilerRuleConfigurations" in params:
            request["ProfilerRuleConfigurations"] = _rules(
                request.get("ProfilerRuleConfigurations") or [],
                params["ProfilerRuleConfigurations"],
            )
        if "RemoteDebugConfig" in params:
            enable = params["RemoteDebugConfig"].get("EnableRemoteDebug", False)
            request["RemoteDebugConfig"] = {"EnableRemoteDebug": enable}
        job.request = request  # a new value: the JSON column sees the change
        job.last_modified_time = state.now()
        arn = job.arn
        session.commit()
    return arn


def _update_warm_pool(job: TrainingJob, request: dict[str, Any], update: dict[str, Any]) -> None:
    resources = request["ResourceConfig"]
    if "KeepAlivePeriodInSeconds" not in resources:
        raise ValidationException(
            f"ResourceConfig.KeepAlivePeriodInSeconds: training job {job.name} did not ask for "
            "a warm pool (KeepAlivePeriodInSeconds at creation): there is none to change"
        )
    pool = warm_pool_status(job.status, request)
    if pool is not None and pool["Status"] == "Terminated":
        raise ValidationException(
            f"ResourceConfig.KeepAlivePeriodInSeconds: the warm pool of training job "
            f"{job.name} is Terminated; only an Available one can be kept longer"
        )
    resources["KeepAlivePeriodInSeconds"] = update["KeepAlivePeriodInSeconds"]


def _profiler_config(current: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    interval = update.get("ProfilingIntervalInMilliseconds")
    if interval is not None and interval not in PROFILING_INTERVALS_MS:
        choices = ", ".join(str(i) for i in PROFILING_INTERVALS_MS)
        raise ValidationException(
            f"ProfilerConfig.ProfilingIntervalInMilliseconds: {interval} is not one of {choices}"
        )
    if update.get("DisableProfiler"):
        if len(update) > 1:
            raise ValidationException(
                "ProfilerConfig: DisableProfiler cannot be combined with other profiler settings"
            )
        return {**current, "DisableProfiler": True}
    merged = {**current, **update, "DisableProfiler": False}
    if not merged.get("S3OutputPath"):
        raise ValidationException(
            "ProfilerConfig.S3OutputPath: profiling needs a place for its output; the job has none"
        )
    return merged


def _rules(current: list[dict[str, Any]], added: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rules are added, never changed: a name already used is refused."""
    names = {rule["RuleConfigurationName"] for rule in current}
    for rule in added:
        if rule["RuleConfigurationName"] in names:
            raise ValidationException(
                "ProfilerRuleConfigurations: a rule named "
                f"{rule['RuleConfigurationName']!r} exists already"
            )
        names.add(rule["RuleConfigurationName"])
    return [*current, *added]
