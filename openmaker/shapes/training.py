"""CreateTrainingJob: the API model's constraints plus openmaker's own rules.

The model says what AWS accepts member by member. The rules below are the ones it cannot
state: rules across members that SageMaker enforces (unique channel names, Gzip only with Pipe,
FastFile only with S3Prefix) and what openmaker can run (a training image, S3 channels, one
homogeneous cluster). Every such rule lives in this module.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import PurePosixPath
from typing import Any

from openmaker.shapes.defaults import default_stopping_condition
from openmaker.shapes.distribution import distribution_problems
from openmaker.shapes.errors import ValidationException
from openmaker.shapes.locations import LocalPaths, location_problems
from openmaker.shapes.validate import error_message, failure, null_failure, validate_input

__all__ = ["check_create_training_job", "default_stopping_condition"]


def check_create_training_job(request: Mapping[str, Any], local: LocalPaths | None = None) -> None:
    """Raise ValidationException unless openmaker can run this CreateTrainingJob request.

    `local` says which local paths the request may name (see openmaker/shapes/locations.py);
    by default any, as for the machine's owner in their own process.
    """
    validate_input("CreateTrainingJob", request)
    # The model has checked types and required members; the rules below rely on that.
    problems = [
        *_algorithm_problems(request),
        *_resource_problems(request),
        *_channel_problems(request),
        *_checkpoint_problems(request),
        *_distribution_problems(request),
        *location_problems(request, local or LocalPaths.anywhere()),
    ]
    if problems:
        raise ValidationException(error_message(problems))


def _algorithm_problems(request: Mapping[str, Any]) -> Iterator[str]:
    spec = request.get("AlgorithmSpecification")
    if spec is None:
        yield null_failure("AlgorithmSpecification")
        return
    # An algorithm's name is replaced by its image before (openmaker/algorithms/training.py).
    if spec.get("AlgorithmName") is not None and spec.get("TrainingImage") is None:
        yield failure(
            spec["AlgorithmName"],
            "AlgorithmSpecification.AlgorithmName",
            "openmaker knows no such algorithm (marketplace and built-in algorithms are not "
            "supported): give AlgorithmSpecification.TrainingImage",
        )
    elif spec.get("TrainingImage") is None:
        yield null_failure("AlgorithmSpecification.TrainingImage")
    for index, definition in enumerate(spec.get("MetricDefinitions") or [], start=1):
        try:
            re.compile(definition["Regex"])
        except re.error as exc:
            yield failure(
                definition["Regex"],
                f"AlgorithmSpecification.MetricDefinitions.{index}.member.Regex",
                f"Member must be a valid regular expression ({exc})",
            )


def _distribution_problems(request: Mapping[str, Any]) -> Iterator[str]:
    hyperparameters = request.get("HyperParameters") or {}
    for name, why in distribution_problems(request):
        yield failure(
            hyperparameters[name],
            f"HyperParameters.{name}",
            f"{why}; openmaker cannot run this distribution",
        )


def _resource_problems(request: Mapping[str, Any]) -> Iterator[str]:
    resources = request.get("ResourceConfig")
    if resources is None:
        yield null_failure("ResourceConfig")
        return
    if resources.get("InstanceGroups"):
        yield failure(
            resources["InstanceGroups"],
            "ResourceConfig.InstanceGroups",
            "heterogeneous clusters are not supported by openmaker: "
            "give ResourceConfig.InstanceType and ResourceConfig.InstanceCount",
        )
        return
    # The model lets both go (they are optional next to InstanceGroups) and allows a count of 0.
    if resources.get("InstanceType") is None:
        yield null_failure("ResourceConfig.InstanceType")
    count = resources.get("InstanceCount")
    if count is None:
        yield null_failure("ResourceConfig.InstanceCount")
    elif count < 1:
        yield failure(
            count,
            "ResourceConfig.InstanceCount",
            "Member must have value greater than or equal to 1",
        )


# Folders the sandbox makes itself: a checkpoint folder bound over one would hide or break it.
_SANDBOX_FOLDERS = (PurePosixPath("/proc"), PurePosixPath("/sys"), PurePosixPath("/dev"))


def _checkpoint_problems(request: Mapping[str, Any]) -> Iterator[str]:
    local = (request.get("CheckpointConfig") or {}).get("LocalPath")
    if local is None:
        return
    at = "CheckpointConfig.LocalPath"
    path = PurePosixPath(local)
    if not path.is_absolute() or any(part in (".", "..") for part in local.split("/")):
        yield failure(local, at, "Member must be an absolute path without . or .. segments")
    elif path == PurePosixPath("/") or any(path.is_relative_to(f) for f in _SANDBOX_FOLDERS):
        yield failure(local, at, "Member must name a folder of its own, not /, /proc, /sys or /dev")


def _channel_problems(request: Mapping[str, Any]) -> Iterator[str]:
    job_mode = (request.get("AlgorithmSpecification") or {}).get("TrainingInputMode")
    seen: set[str] = set()
    for index, channel in enumerate(request.get("InputDataConfig") or [], 1):
        at = f"InputDataConfig.{index}.member"
        name = channel["ChannelName"]
        if name in seen:
            yield failure(
                name, f"{at}.ChannelName", "Channel names must be unique within InputDataConfig"
            )
        if name in (".", ".."):
            # The pattern admits them, but as folder names they would leave input/data/.
            yield failure(name, f"{at}.ChannelName", "Member must name a folder, not . or ..")
        seen.add(name)
        yield from _data_source_problems(channel["DataSource"], f"{at}.DataSource")
        # The channel's InputMode overrides the job's TrainingInputMode.
        mode = channel.get("InputMode") or job_mode
        if mode is None:
            continue  # no mode at all: the missing TrainingInputMode is the problem to report
        if channel.get("CompressionType") == "Gzip" and mode != "Pipe":
            yield failure(
                "Gzip",
                f"{at}.CompressionType",
                f"CompressionType Gzip is allowed only with Pipe input mode, not {mode}",
            )
        s3_source = channel["DataSource"].get("S3DataSource") or {}
        yield from _input_mode_problems(channel, s3_source, mode, at)


def _input_mode_problems(
    channel: Mapping[str, Any], s3_source: Mapping[str, Any], mode: str, at: str
) -> Iterator[str]:
    """The combinations of input mode and data that SageMaker refuses (Channel, S3DataSource)."""
    s3_type = s3_source.get("S3DataType")
    source_at = f"{at}.DataSource.S3DataSource"
    if mode == "FastFile" and s3_type is not None and s3_type != "S3Prefix":
        yield failure(
            s3_type,
            f"{source_at}.S3DataType",
            "FastFile input mode is allowed only with S3DataType S3Prefix",
        )
    elif s3_type == "AugmentedManifestFile" and mode != "Pipe":
        yield failure(
            s3_type,
            f"{source_at}.S3DataType",
            f"AugmentedManifestFile can only be used with Pipe input mode, not {mode}",
        )
    if s3_type == "AugmentedManifestFile" and not s3_source.get("AttributeNames"):
        yield null_failure(f"{source_at}.AttributeNames")
    if channel.get("RecordWrapperType") == "RecordIO" and mode != "Pipe":
        # "In File mode, leave this field unset or set it to None" (Channel); FastFile too.
        yield failure(
            "RecordIO",
            f"{at}.RecordWrapperType",
            f"RecordWrapperType RecordIO is allowed only with Pipe input mode, not {mode}",
        )


def _data_source_problems(source: Mapping[str, Any], at: str) -> Iterator[str]:
    others = [name for name, value in source.items() if name != "S3DataSource" and value]
    for name in others:
        yield failure(
            source[name],
            f"{at}.{name}",
            f"{name} is not supported by openmaker: give {at}.S3DataSource",
        )
    if source.get("S3DataSource") is None and not others:
        yield null_failure(f"{at}.S3DataSource")
