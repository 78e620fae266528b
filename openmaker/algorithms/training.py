"""A CreateTrainingJob request that names an algorithm (`AlgorithmSpecification.AlgorithmName`,
a name or an ARN): checked against the algorithm's `TrainingSpecification` as SageMaker checks
it, then given the algorithm's image, metric definitions and hyperparameter defaults. The job
keeps the AlgorithmName it was given (DescribeTrainingJob shows it)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from openmaker.algorithms.digests import pinned
from openmaker.algorithms.hyperparameters import value_problem
from openmaker.algorithms.service import Algorithms
from openmaker.algorithms.store import Store
from openmaker.settings import Settings
from openmaker.shapes.errors import ValidationException
from openmaker.shapes.locations import LocalPaths
from openmaker.shapes.validate import error_message, failure, validate_input

ALGORITHM = "AlgorithmSpecification"


def with_algorithm(request: dict[str, Any], algorithms: Algorithms) -> dict[str, Any]:
    """`request` as the job runs it: ValidationException if the algorithm refuses it."""
    given = request.get(ALGORITHM) or {}
    if given.get("TrainingImage") is not None:
        raise ValidationException(
            error_message(
                [
                    failure(
                        given["TrainingImage"],
                        f"{ALGORITHM}.TrainingImage",
                        "Member must be null when AlgorithmName is given (the algorithm names "
                        "its image)",
                    )
                ]
            )
        )
    spec = algorithms.get(given["AlgorithmName"], f"{ALGORITHM}.AlgorithmName").request[
        "TrainingSpecification"
    ]
    request = copy.deepcopy(request)
    supported = {h["Name"]: h for h in spec.get("SupportedHyperParameters") or []}
    hyperparameters = request.setdefault("HyperParameters", {})
    for name, hyperparameter in supported.items():
        if name not in hyperparameters and hyperparameter.get("DefaultValue") is not None:
            hyperparameters[name] = hyperparameter["DefaultValue"]
    if not hyperparameters:
        del request["HyperParameters"]
    problems = [
        *_hyperparameter_problems(hyperparameters, supported),
        *_channel_problems(request, spec),
        *_resource_problems(request, spec),
    ]
    if problems:
        raise ValidationException(error_message(problems))
    algorithm = request[ALGORITHM]
    # The image the algorithm was registered with, by its digest (digests.py).
    algorithm["TrainingImage"] = pinned(spec, "TrainingImage", "TrainingImageDigest")
    if not algorithm.get("MetricDefinitions") and spec.get("MetricDefinitions"):
        algorithm["MetricDefinitions"] = copy.deepcopy(spec["MetricDefinitions"])
    return request


def _hyperparameter_problems(
    values: dict[str, str], supported: dict[str, dict[str, Any]]
) -> Iterator[str]:
    for name, value in values.items():
        spec = supported.get(name)
        if spec is None:
            known = ", ".join(sorted(supported)) or "none"
            yield failure(
                value,
                f"HyperParameters.{name}",
                f"Member must be one of the algorithm's hyperparameters ({known})",
            )
        elif (why := value_problem(spec, value)) is not None:
            yield failure(value, f"HyperParameters.{name}", why)
    for name, spec in supported.items():
        if spec.get("IsRequired") and name not in values:
            yield (
                f"Value null at 'HyperParameters.{name}' failed to satisfy constraint: "
                "Member must not be null (the algorithm requires it)"
            )


def _channel_problems(request: dict[str, Any], spec: dict[str, Any]) -> Iterator[str]:
    supported = {c["Name"]: c for c in spec["TrainingChannels"]}
    job_mode = request[ALGORITHM].get("TrainingInputMode")
    given = request.get("InputDataConfig") or []
    for index, channel in enumerate(given, 1):
        at = f"InputDataConfig.{index}.member"
        name = channel["ChannelName"]
        allowed = supported.get(name)
        if allowed is None:
            yield failure(
                name,
                f"{at}.ChannelName",
                f"Member must be one of the algorithm's channels ({', '.join(supported)})",
            )
            continue
        mode = channel.get("InputMode") or job_mode
        if mode not in allowed["SupportedInputModes"]:
            yield failure(
                mode,
                f"{at}.InputMode",
                "Member must be one of the input modes the algorithm's "
                f"channel {name} supports ({', '.join(allowed['SupportedInputModes'])})",
            )
        content = channel.get("ContentType")
        if content is not None and content not in allowed["SupportedContentTypes"]:
            yield failure(
                content,
                f"{at}.ContentType",
                "Member must be one of the content types the "
                f"algorithm's channel {name} supports "
                f"({', '.join(allowed['SupportedContentTypes'])})",
            )
        compression = channel.get("CompressionType") or "None"
        compressions = allowed.get("SupportedCompressionTypes") or ["None"]
        if compression not in compressions:
            yield failure(
                compression,
                f"{at}.CompressionType",
                "Member must be one of the compression "
                f"types the algorithm's channel {name} supports ({', '.join(compressions)})",
            )
    named = {c["ChannelName"] for c in given}
    for name, allowed in supported.items():
        if allowed.get("IsRequired") and name not in named:
            yield failure(
                sorted(named),
                "InputDataConfig",
                f"Member must include the channel {name} (the algorithm requires it)",
            )


def _resource_problems(request: dict[str, Any], spec: dict[str, Any]) -> Iterator[str]:
    resources = request.get("ResourceConfig") or {}
    instance_type = resources.get("InstanceType")
    supported = spec["SupportedTrainingInstanceTypes"]
    if instance_type is not None and instance_type not in supported:
        yield failure(
            instance_type,
            "ResourceConfig.InstanceType",
            f"Member must be one of the algorithm's instance types ({', '.join(supported)})",
        )
    count = resources.get("InstanceCount", 1)
    if count > 1 and not spec.get("SupportsDistributedTraining", False):
        yield failure(
            count,
            "ResourceConfig.InstanceCount",
            "Member must be 1: the algorithm does not support distributed training",
        )


def apply_algorithm(
    request: dict[str, Any], settings: Settings, local: LocalPaths
) -> dict[str, Any]:
    """The training service's door: `request` as the job runs it (see `with_algorithm`)."""
    validate_input("CreateTrainingJob", request)  # the rules above read a well-formed request
    return with_algorithm(request, Algorithms(Store.of(settings), local))
