"""Batch transform with an inference pipeline for real: a real `openmaker server`, boto3, two
containers on each instance (tests/test_endpoints_pipeline.py's), each mini-batch through both;
and the models a transform job cannot use, refused."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.helpers import unique_name
from tests.test_endpoints import make_serve_image
from tests.test_endpoints_pipeline import ROLE, STEP
from tests.test_transform import Transforms, pytestmark, transforms

__all__ = ["pytestmark", "transforms"]  # the fixture, and the skip without a sandbox


def pipeline_model(transforms: Transforms, mode: str = "Serial") -> str:
    name = unique_name("pipe")
    image = str(make_serve_image(transforms.tmp_path / name, STEP))
    containers: list[dict[str, Any]] = [
        {"Image": image, "ContainerHostname": step, "Environment": {"STEP": step}}
        for step in ("first", "second")
    ]
    transforms.sagemaker.create_model(
        ModelName=name,
        Containers=containers,
        InferenceExecutionConfig={"Mode": mode},
        ExecutionRoleArn=ROLE,
    )
    return name


def test_each_mini_batch_goes_through_the_pipeline(transforms: Transforms) -> None:
    prefix = transforms.inputs({"a.csv": "1,2\n", "b.csv": "3\n"})
    name = transforms.create(pipeline_model(transforms), prefix, BatchStrategy="SingleRecord")
    described = transforms.wait(name)
    assert described["TransformJobStatus"] == "Completed", described.get("FailureReason")
    assert transforms.output_keys(name) == ["a.csv.out", "b.csv.out"]
    # The first container's answer, with its content type, is the second one's request.
    for key, record in (("a.csv.out", "1,2\n"), ("b.csv.out", "3\n")):
        composed = f"second[application/x-first](first[text/csv]({record}))"
        assert transforms.output(name, key).rstrip("\n") == composed


@pytest.mark.parametrize("kind", ["MultiModel", "Direct"])
def test_a_model_a_transform_cannot_target_is_refused(transforms: Transforms, kind: str) -> None:
    if kind == "Direct":
        model = pipeline_model(transforms, "Direct")
    else:
        model = unique_name("mme")
        transforms.sagemaker.create_model(
            ModelName=model,
            PrimaryContainer={
                "Image": str(make_serve_image(transforms.tmp_path / model, STEP)),
                "Mode": "MultiModel",
                "ModelDataUrl": "s3://batch/models/",
            },
            ExecutionRoleArn=ROLE,
        )
    with pytest.raises(ClientError) as refused:
        transforms.create(model, transforms.inputs({"a.csv": "1\n"}))
    error = refused.value.response["Error"]
    assert error["Code"] == "ValidationException"
    assert error["Message"].startswith(f"ModelName: model {model} ")
    assert kind in error["Message"]
