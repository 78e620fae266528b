"""CreateAlgorithm's rules that botocore's model cannot state (it has checked the rest)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from openmaker.algorithms.hyperparameters import spec_problem
from openmaker.shapes.errors import ValidationException
from openmaker.shapes.locations import LocalPaths, image_path
from openmaker.shapes.validate import error_message, failure

TRAINING = "TrainingSpecification"


def check_algorithm(request: dict[str, Any], local: LocalPaths) -> None:
    problems = [
        *_spec_problems(request[TRAINING]),
        *_image_problems(request, local),
        *_profile_problems(request),
        *additional_sources(request),
    ]
    if problems:
        raise ValidationException(error_message(problems))


def _spec_problems(spec: dict[str, Any]) -> Iterator[str]:
    names: set[str] = set()
    for index, hyperparameter in enumerate(spec.get("SupportedHyperParameters") or [], 1):
        at = f"{TRAINING}.SupportedHyperParameters.{index}.member"
        if hyperparameter["Name"] in names:
            yield failure(hyperparameter["Name"], f"{at}.Name", "Member must be unique")
        names.add(hyperparameter["Name"])
        if (why := spec_problem(hyperparameter)) is not None:
            yield failure(hyperparameter["Name"], at, why)
    channels: set[str] = set()
    for index, channel in enumerate(spec["TrainingChannels"], 1):
        if channel["Name"] in channels:
            at = f"{TRAINING}.TrainingChannels.{index}.member.Name"
            yield failure(channel["Name"], at, "Member must be unique")
        channels.add(channel["Name"])


def _image_problems(request: dict[str, Any], local: LocalPaths) -> Iterator[str]:
    """A local image (a bring-your-own folder) only where the machine's owner allows."""
    images = [(f"{TRAINING}.TrainingImage", request[TRAINING]["TrainingImage"])]
    containers = (request.get("InferenceSpecification") or {}).get("Containers") or []
    images += [
        (f"InferenceSpecification.Containers.{i}.member.Image", c["Image"])
        for i, c in enumerate(containers, 1)
        if c.get("Image")
    ]
    for at, image in images:
        path = image_path(image)
        if path is not None and (why := local.refusal(path)) is not None:
            yield failure(image, at, why)


def _profile_problems(request: dict[str, Any]) -> Iterator[str]:
    """A profile's transform job runs the algorithm's inference container (validation.py)."""
    profiles = (request.get("ValidationSpecification") or {}).get("ValidationProfiles") or []
    names: set[str] = set()
    for index, profile in enumerate(profiles, 1):
        at = f"ValidationSpecification.ValidationProfiles.{index}.member"
        if profile["ProfileName"] in names:
            yield failure(profile["ProfileName"], f"{at}.ProfileName", "Member must be unique")
        names.add(profile["ProfileName"])
        containers = (request.get("InferenceSpecification") or {}).get("Containers") or []
        image = next((c.get("Image") for c in containers[:1]), None)
        if profile.get("TransformJobDefinition") is not None and not image:
            yield failure(
                profile["ProfileName"],
                f"{at}.TransformJobDefinition",
                "Member needs InferenceSpecification.Containers.1.Image (the model it "
                "transforms with)",
            )


def additional_sources(request: dict[str, Any]) -> Iterator[str]:
    """`AdditionalS3DataSource` is refused, not kept unused: a container that expects the data
    would fail with no reason a person could find (openmaker does not fetch it yet)."""
    holders = [(TRAINING, request.get(TRAINING) or {})]
    containers = (request.get("InferenceSpecification") or {}).get("Containers") or []
    holders += [
        (f"InferenceSpecification.Containers.{i}.member", c) for i, c in enumerate(containers, 1)
    ]
    for at, holder in holders:
        if holder.get("AdditionalS3DataSource") is not None:
            yield failure(
                holder["AdditionalS3DataSource"].get("S3Uri"),
                f"{at}.AdditionalS3DataSource",
                "Member must be null: openmaker does not fetch additional data sources yet",
            )
