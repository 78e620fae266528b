"""What CreateTransformJob refuses beyond the model's shapes (openmaker/shapes/validate.py
checks those): each a ValidationException naming the member."""

from __future__ import annotations

from typing import Any

from openmaker.serving import multi_model, pipeline
from openmaker.serving.models import the_container
from openmaker.shapes.errors import ValidationException
from openmaker.transform.filters import parse

# SageMaker's limits: a payload of at most 100 MB, and in flight per instance at most that.
MAX_PAYLOAD_MB = 100


def check_create_transform_job(request: dict[str, Any]) -> None:
    payload = request.get("MaxPayloadInMB")
    concurrent = request.get("MaxConcurrentTransforms")
    if payload is not None and payload > MAX_PAYLOAD_MB:
        raise ValidationException(
            f"Value {payload} at 'maxPayloadInMB' failed to satisfy constraint: Member must "
            f"have value less than or equal to {MAX_PAYLOAD_MB}"
        )
    if payload and concurrent and payload * concurrent > MAX_PAYLOAD_MB:
        raise ValidationException(
            f"MaxConcurrentTransforms ({concurrent}) × MaxPayloadInMB ({payload}) must not "
            f"exceed {MAX_PAYLOAD_MB}"
        )
    transform_input = request["TransformInput"]
    source = transform_input["DataSource"].get("S3DataSource")
    if source is None:
        raise ValidationException(
            "TransformInput.DataSource.S3DataSource: openmaker reads transform input from S3 only"
        )
    if source["S3DataType"] == "AugmentedManifestFile":
        raise ValidationException(
            "TransformInput.DataSource.S3DataSource.S3DataType: AugmentedManifestFile is not "
            "supported by openmaker's batch transform; use S3Prefix or ManifestFile"
        )
    uris = [
        ("TransformInput.DataSource.S3DataSource.S3Uri", source["S3Uri"]),
        ("TransformOutput.S3OutputPath", request["TransformOutput"]["S3OutputPath"]),
    ]
    capture = request.get("DataCaptureConfig")
    if capture is not None:
        uris.append(("DataCaptureConfig.DestinationS3Uri", capture["DestinationS3Uri"]))
    for member, uri in uris:
        if not uri.startswith("s3://"):
            raise ValidationException(f"{member}: {uri!r} is not an s3:// URI")
    if transform_input.get("CompressionType", "None") != "None":
        raise ValidationException(
            "TransformInput.CompressionType: Gzip input is not supported by openmaker yet"
        )
    if payload == 0 and transform_input.get("SplitType", "None") != "None":
        raise ValidationException(
            "MaxPayloadInMB: 0 (the whole object, chunked) needs SplitType None"
        )
    _check_data_processing(request)


def _check_data_processing(request: dict[str, Any]) -> None:
    processing = request.get("DataProcessing") or {}
    for member in ("InputFilter", "OutputFilter"):
        if member in processing:
            try:
                parse(processing[member], f"DataProcessing.{member}")
            except ValueError as exc:
                raise ValidationException(str(exc)) from None
    if processing.get("JoinSource") == "Input":
        if request["TransformInput"].get("SplitType", "None") != "Line":
            raise ValidationException(
                "DataProcessing.JoinSource: joining the input needs TransformInput.SplitType Line"
            )
        if request["TransformOutput"].get("AssembleWith", "None") != "Line":
            raise ValidationException(
                "DataProcessing.JoinSource: joining the input needs TransformOutput.AssembleWith "
                "Line"
            )


def check_transform_model(name: str, model: dict[str, Any]) -> None:
    """The model `name` (CreateModel's request) can run a transform: a transform job has no
    member naming a multi-model container's model, or a Direct pipeline's container."""
    member, container = the_container(model)
    if multi_model.is_multi_model(container):
        raise ValidationException(
            f"ModelName: model {name} is a multi-model model ({member}.Mode MultiModel), which "
            "batch transform does not support: a transform job cannot name its target model"
        )
    if pipeline.members(model) and pipeline.mode(model) == pipeline.DIRECT:
        raise ValidationException(
            f"ModelName: model {name} is configured for direct invocation "
            "(InferenceExecutionConfig.Mode Direct), which batch transform does not support: "
            "a transform job cannot name its target container; use Serial"
        )
