"""Jobs as resources: statuses as the model names them, the kinds the shared machinery takes,
and errors the model declares (the layers: tests/test_layers.py)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.model import StringShape

from openmaker import resources
from openmaker.api.operations import Backend
from openmaker.jobs.db import JobRecord, TrainingJob
from openmaker.jobs.logs import LOG_GROUP
from openmaker.serving.kind import ENDPOINT
from openmaker.settings import load_settings
from openmaker.shapes import errors
from openmaker.shapes.errors import answered_errors, declared_errors
from openmaker.shapes.model import shape
from openmaker.training import state
from openmaker.training.kind import TRAINING
from openmaker.training.status import SecondaryStatus, TrainingJobStatus
from openmaker.transform.kind import TRANSFORM
from tests.apiserver import ApiServer, stop_all
from tests.helpers import make_image, request


def test_statuses_are_the_models_and_carry_their_messages() -> None:
    assert {str(s) for s in SecondaryStatus} <= set(_enum("SecondaryStatus"))
    assert {str(s) for s in TrainingJobStatus} <= set(_enum("TrainingJobStatus"))
    assert all(status.message for status in SecondaryStatus)
    # str-valued: stored and sent as the plain name.
    assert json.dumps([SecondaryStatus.TRAINING, TrainingJobStatus.IN_PROGRESS]) == (
        '["Training", "InProgress"]'
    )


def _enum(name: str) -> list[str]:
    model = shape(name)
    assert isinstance(model, StringShape)
    return list(model.enum)


def test_a_status_the_model_does_not_name_is_refused(home: Path) -> None:
    job = TrainingJob(name="j", transitions=[], status="InProgress", secondary_status="Starting")
    state.enter(job, SecondaryStatus.DOWNLOADING)
    assert job.transitions[-1]["StatusMessage"] == SecondaryStatus.DOWNLOADING.message
    state.enter(job, "Training")  # a plain name is the same status
    assert (job.secondary_status, job.status) == ("Training", "InProgress")
    with pytest.raises(ValueError, match="Trainnig"):
        state.enter(job, "Trainnig")


def test_every_kind_is_a_job_the_shared_machinery_can_handle() -> None:
    shared = set(JobRecord.__annotations__)
    assert {"status", "worker", "placement", "request"} <= shared
    for kind in resources.KINDS:
        table = kind.table()
        assert issubclass(table, JobRecord)
        assert shared <= set(table.__table__.columns.keys())  # type: ignore[attr-defined]
        assert kind.active.isdisjoint(kind.ended)
        assert shape(kind.name)  # a resource the model names
    arn = "arn:aws:sagemaker:us-east-1:000000000000:training-job/a-job"
    assert resources.of_arn(arn) is TRAINING
    assert resources.of_arn("arn:aws:sagemaker:us-east-1:000000000000:endpoint/e") is ENDPOINT
    assert resources.of_arn("arn:aws:sagemaker:us-east-1:000000000000:endpoint-config/e") is None
    assert resources.of_arn("training-job/a-job") is None
    transform = "arn:aws:sagemaker:us-east-1:000000000000:transform-job/t"
    assert resources.of_arn(transform) is TRANSFORM
    assert resources.log_groups() == (
        LOG_GROUP,
        "/aws/sagemaker/Endpoints",
        "/aws/sagemaker/ProcessingJobs",
        "/aws/sagemaker/TransformJobs",
    )


def _served() -> dict[str, list[str]]:
    """The operations the server's handler registry holds, by service (OPENMAKER_HOME set)."""
    handlers = Backend(load_settings()).handlers
    return {service: sorted(handlers.of(service)) for service in ("sagemaker", "logs")}


def test_every_error_class_openmaker_defines_is_declared_somewhere(home: Path) -> None:
    """Each error of openmaker/shapes/errors.py is a common AWS error or an error shape that the
    sagemaker or logs model declares."""
    declared = set(errors.COMMON_ERRORS)
    for service, operations in _served().items():
        for operation in operations:
            declared |= declared_errors(operation, service)
    codes = {
        value.code
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, errors.ServiceError)
    }
    assert codes - {errors.ServiceError.code} <= declared


@pytest.fixture
def ended_job(api_server: ApiServer, tmp_path: Path) -> Iterator[dict[str, str]]:
    sagemaker = api_server.client("sagemaker")
    name = f"errs-{uuid.uuid4().hex[:8]}"
    image = make_image(tmp_path / "image", "#!/bin/sh\necho done\n")
    body = request(name, str(image), "s3://errs/out")
    api_server.client("s3").create_bucket(Bucket="errs")
    arn = sagemaker.create_training_job(**body)["TrainingJobArn"]
    try:
        waiter = sagemaker.get_waiter("training_job_completed_or_stopped")
        waiter.wait(TrainingJobName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
        yield {"name": name, "arn": arn, "image": str(image)}
    finally:
        stop_all(sagemaker, [name])


def test_every_error_openmaker_answers_is_one_the_model_declares(
    api_server: ApiServer, ended_job: dict[str, str], home: Path
) -> None:
    """Each operation served, provoked into its errors, answers only errors its model declares
    for it (or common ones)."""
    name, arn = ended_job["name"], ended_job["arn"]
    missing_arn = arn.replace(name, "no-such-job")
    duplicate = request(name, ended_job["image"], "s3://errs/out")
    too_many = request("too-many", ended_job["image"], "s3://errs/out")
    too_many["ResourceConfig"]["InstanceCount"] = 1000
    group = {"logGroupName": LOG_GROUP}
    provoked: list[tuple[str, str, dict[str, Any]]] = [
        ("sagemaker", "CreateTrainingJob", duplicate),
        ("sagemaker", "CreateTrainingJob", too_many),
        ("sagemaker", "CreateTrainingJob", {**duplicate, "TrainingJobName": "bad name"}),
        ("sagemaker", "DescribeTrainingJob", {"TrainingJobName": "no-such-job"}),
        ("sagemaker", "ListTrainingJobs", {"NextToken": "not-a-token"}),
        ("sagemaker", "StopTrainingJob", {"TrainingJobName": "no-such-job"}),
        ("sagemaker", "StopTrainingJob", {"TrainingJobName": name}),
        (
            "sagemaker",
            "UpdateTrainingJob",
            {"TrainingJobName": "no-such-job", "RemoteDebugConfig": {"EnableRemoteDebug": True}},
        ),
        ("sagemaker", "UpdateTrainingJob", {"TrainingJobName": name}),
        ("sagemaker", "Search", {"Resource": "TrainingJob", "NextToken": "not-a-token"}),
        ("sagemaker", "AddTags", {"ResourceArn": missing_arn, "Tags": [{"Key": "k", "Value": ""}]}),
        ("sagemaker", "AddTags", {"ResourceArn": arn, "Tags": [{"Key": "aws:k", "Value": ""}]}),
        ("sagemaker", "ListTags", {"ResourceArn": missing_arn}),
        ("sagemaker", "ListTags", {"ResourceArn": arn, "NextToken": "not-a-token"}),
        ("sagemaker", "DeleteTags", {"ResourceArn": missing_arn, "TagKeys": ["k"]}),
        ("sagemaker", "CreateModel", {"ModelName": "m", "PrimaryContainer": {"Image": "No Ref"}}),
        ("sagemaker", "DescribeModel", {"ModelName": "no-such-model"}),
        ("sagemaker", "ListModels", {"NextToken": "not-a-token"}),
        ("sagemaker", "DeleteModel", {"ModelName": "no-such-model"}),
        (
            "sagemaker",
            "CreateEndpointConfig",
            {"EndpointConfigName": "c", "ProductionVariants": []},
        ),
        ("sagemaker", "DescribeEndpointConfig", {"EndpointConfigName": "no-such-config"}),
        ("sagemaker", "ListEndpointConfigs", {"NextToken": "not-a-token"}),
        ("sagemaker", "DeleteEndpointConfig", {"EndpointConfigName": "no-such-config"}),
        ("sagemaker", "CreateEndpoint", {"EndpointName": "e", "EndpointConfigName": "no-such"}),
        ("sagemaker", "DescribeEndpoint", {"EndpointName": "no-such-endpoint"}),
        ("sagemaker", "ListEndpoints", {"NextToken": "not-a-token"}),
        ("sagemaker", "DeleteEndpoint", {"EndpointName": "no-such-endpoint"}),
        ("sagemaker", "CreateProcessingJob", {"ProcessingJobName": "bad name"}),
        ("sagemaker", "DescribeProcessingJob", {"ProcessingJobName": "no-such-job"}),
        ("sagemaker", "ListProcessingJobs", {"NextToken": "not-a-token"}),
        ("sagemaker", "StopProcessingJob", {"ProcessingJobName": "no-such-job"}),
        (
            "sagemaker",
            "CreateTransformJob",
            {
                "TransformJobName": "t",
                "ModelName": "no-such-model",
                "TransformInput": {
                    "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/"}}
                },
                "TransformOutput": {"S3OutputPath": "s3://b/out"},
                "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": 1},
            },
        ),
        ("sagemaker", "DescribeTransformJob", {"TransformJobName": "no-such-job"}),
        ("sagemaker", "ListTransformJobs", {"NextToken": "not-a-token"}),
        ("sagemaker", "StopTransformJob", {"TransformJobName": "no-such-job"}),
        ("sagemaker", "UpdateEndpoint", {"EndpointName": "e", "EndpointConfigName": "no-such"}),
        (
            "sagemaker",
            "UpdateEndpointWeightsAndCapacities",
            {
                "EndpointName": "no-such-endpoint",
                "DesiredWeightsAndCapacities": [{"VariantName": "v", "DesiredWeight": 1.0}],
            },
        ),
        ("sagemaker", "CreateAlgorithm", {"AlgorithmName": "a"}),
        ("sagemaker", "DescribeAlgorithm", {"AlgorithmName": "no-such-algorithm"}),
        ("sagemaker", "ListAlgorithms", {"NextToken": "not-a-token"}),
        ("sagemaker", "DeleteAlgorithm", {"AlgorithmName": "no-such-algorithm"}),
        ("sagemaker", "CreateModelPackage", {"ModelPackageName": "p"}),
        ("sagemaker", "DescribeModelPackage", {"ModelPackageName": "no-such-package"}),
        ("sagemaker", "ListModelPackages", {"NextToken": "not-a-token"}),
        ("sagemaker", "DeleteModelPackage", {"ModelPackageName": "no-such-package"}),
        ("sagemaker", "UpdateModelPackage", {"ModelPackageArn": missing_arn}),
        ("sagemaker", "CreateModelPackageGroup", {"ModelPackageGroupName": "bad name"}),
        ("sagemaker", "DescribeModelPackageGroup", {"ModelPackageGroupName": "no-such-group"}),
        ("sagemaker", "ListModelPackageGroups", {"NextToken": "not-a-token"}),
        ("sagemaker", "DeleteModelPackageGroup", {"ModelPackageGroupName": "no-such-group"}),
        ("logs", "DescribeLogGroups", {"limit": 0}),
        ("logs", "DescribeLogStreams", {"logGroupName": "/no/such/group"}),
        ("logs", "DescribeLogStreams", {**group, "nextToken": "nonsense"}),
        ("logs", "GetLogEvents", {**group, "logStreamName": "no-such-stream"}),
        ("logs", "FilterLogEvents", {**group, "logStreamNames": ["a"], "logStreamNamePrefix": "a"}),
        ("logs", "FilterLogEvents", {**group, "nextToken": "nonsense"}),
    ]
    # The server judges every request: none is refused by the client first.
    unchecked = Config(parameter_validation=False, retries={"max_attempts": 1})
    clients = {s: api_server.client(s, config=unchecked) for s in ("sagemaker", "logs")}
    answered: dict[tuple[str, str], set[str]] = {}
    for service, operation, params in provoked:
        client = clients[service]
        methods = {api: method for method, api in client.meta.method_to_api_mapping.items()}
        with pytest.raises(ClientError) as refused:
            getattr(client, methods[operation])(**params)
        code = refused.value.response["Error"]["Code"]
        answered.setdefault((service, operation), set()).add(code)
        assert code in answered_errors(operation, service), (operation, params, code)
    # Every operation served was provoked; every departure is one still taken.
    served = {(service, op) for service, ops in _served().items() for op in ops}
    assert served == set(answered)
    for (service, operation), codes in errors.DEPARTURES.items():
        assert codes <= answered[(service, operation)] - declared_errors(operation, service)
