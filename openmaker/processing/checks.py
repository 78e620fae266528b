"""CreateProcessingJob: the API model's constraints plus the rules it cannot state (unique
input and output names, local paths under /opt/ml/processing/, Gzip only with Pipe) and what
openmaker can run (S3 inputs and outputs, an image started by its ContainerEntrypoint). Every
such rule lives in this module."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import PurePosixPath
from typing import Any

from openmaker.shapes.errors import ValidationException
from openmaker.shapes.locations import LocalPaths, location_problems
from openmaker.shapes.validate import error_message, failure, null_failure, validate_input
from openmaker.training.host.images import ImageError, resolve_image

PROCESSING_ROOT = PurePosixPath("/opt/ml/processing")


def check_create_processing_job(
    request: Mapping[str, Any], local: LocalPaths | None = None
) -> None:
    """Raise ValidationException unless openmaker can run this CreateProcessingJob request."""
    validate_input("CreateProcessingJob", request)
    problems = [
        *_app_problems(request.get("AppSpecification") or {}),
        *_input_problems(request.get("ProcessingInputs") or []),
        *_output_problems((request.get("ProcessingOutputConfig") or {}).get("Outputs") or []),
        *location_problems(request, local or LocalPaths.anywhere(), "CreateProcessingJob"),
    ]
    if problems:
        raise ValidationException(error_message(problems))


def _app_problems(app: Mapping[str, Any]) -> Iterator[str]:
    image = app.get("ImageUri")
    if image is None:
        return
    try:
        resolved = resolve_image(image, entrypoint=True)
    except ImageError as exc:
        yield failure(image, "AppSpecification.ImageUri", str(exc))
        return
    # A registry image (or image file) runs its own ENTRYPOINT and CMD, as SageMaker does.
    if not app.get("ContainerEntrypoint") and resolved.pulled is None:
        yield null_failure("AppSpecification.ContainerEntrypoint") + (
            " (openmaker starts a local or framework processing image by its ContainerEntrypoint)"
        )


def _local_path_problems(path: str, at: str) -> Iterator[str]:
    local = PurePosixPath(path)
    segments = path.split("/")
    if any(part in (".", "..") for part in segments) or not local.is_relative_to(PROCESSING_ROOT):
        yield failure(path, at, f"Member must be a path under {PROCESSING_ROOT}/")
    elif local == PROCESSING_ROOT:
        yield failure(path, at, f"Member must name a folder below {PROCESSING_ROOT}/")


def _overlap(path: str, seen: dict[PurePosixPath, str]) -> str | None:
    """The member already given a LocalPath that holds `path`, lies in it, or is it."""
    local = PurePosixPath(path)
    for other, at in seen.items():
        if local.is_relative_to(other) or other.is_relative_to(local):
            return at
    return None


def _input_problems(inputs: list[Mapping[str, Any]]) -> Iterator[str]:
    names: set[str] = set()
    paths: dict[PurePosixPath, str] = {}
    for index, item in enumerate(inputs, 1):
        at = f"ProcessingInputs.{index}.member"
        if item["InputName"] in names:
            yield failure(
                item["InputName"],
                f"{at}.InputName",
                "Input names must be unique within ProcessingInputs",
            )
        names.add(item["InputName"])
        if item.get("DatasetDefinition") is not None:
            yield failure(
                "DatasetDefinition",
                f"{at}.DatasetDefinition",
                "DatasetDefinition (Athena, Redshift) is not supported by openmaker: give "
                f"{at}.S3Input",
            )
            continue
        source = item.get("S3Input")
        if source is None:
            yield null_failure(f"{at}.S3Input")
            continue
        path = source["LocalPath"]
        found = list(_local_path_problems(path, f"{at}.S3Input.LocalPath"))
        yield from found
        # One input may lie in another's folder, as SageMaker allows (the SDK's processors put
        # their code at /opt/ml/processing/input/code, beside data at /opt/ml/processing/input).
        if not found and (other := paths.get(PurePosixPath(path))):
            yield failure(
                path, f"{at}.S3Input.LocalPath", f"Member must not be the LocalPath of {other}"
            )
        paths[PurePosixPath(path)] = at
        mode = source.get("S3InputMode") or "File"
        if source.get("S3CompressionType") == "Gzip" and mode != "Pipe":
            yield failure(
                "Gzip",
                f"{at}.S3Input.S3CompressionType",
                f"S3CompressionType Gzip is allowed only with S3InputMode Pipe, not {mode}",
            )


def _output_problems(outputs: list[Mapping[str, Any]]) -> Iterator[str]:
    names: set[str] = set()
    paths: dict[PurePosixPath, str] = {}
    for index, output in enumerate(outputs, 1):
        at = f"ProcessingOutputConfig.Outputs.{index}.member"
        if output["OutputName"] in names:
            yield failure(
                output["OutputName"],
                f"{at}.OutputName",
                "Output names must be unique within ProcessingOutputConfig.Outputs",
            )
        names.add(output["OutputName"])
        if output.get("FeatureStoreOutput") is not None:
            yield failure(
                "FeatureStoreOutput",
                f"{at}.FeatureStoreOutput",
                f"FeatureStoreOutput is not supported by openmaker: give {at}.S3Output",
            )
            continue
        target = output.get("S3Output")
        if target is None:
            yield null_failure(f"{at}.S3Output")
            continue
        path = target["LocalPath"]
        found = list(_local_path_problems(path, f"{at}.S3Output.LocalPath"))
        yield from found
        if not found and (other := _overlap(path, paths)):
            yield failure(
                path,
                f"{at}.S3Output.LocalPath",
                f"Member must not overlap the LocalPath of {other}",
            )
        paths[PurePosixPath(path)] = at
