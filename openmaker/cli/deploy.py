"""`openmaker endpoints deploy NAME`: a model, an endpoint configuration and an endpoint, all
named NAME (as the sagemaker SDK names them), from a training job's artifacts and image or from
a model archive and an image; then the endpoint followed until it is InService."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from openmaker.cli.output import console, fail
from openmaker.cli.sagemaker_calls import CallFailed, SageMakerCalls
from openmaker.settings import Settings, SettingsError, load_settings

# How often the endpoint's status is read while waiting.
POLL_SECONDS = 1.0
# A script-mode job's hyperparameters that say where its code is (SDK v2), and the model
# environment variables a framework image reads them from.
_SCRIPT_MODE = {
    "sagemaker_program": "SAGEMAKER_PROGRAM",
    "sagemaker_submit_directory": "SAGEMAKER_SUBMIT_DIRECTORY",
}


def deploy(
    name: Annotated[str, typer.Argument(help="The endpoint's name (its model's and config's).")],
    job: Annotated[
        str | None, typer.Option(help="A completed training job: its model and image.")
    ] = None,
    model_data: Annotated[
        str | None,
        typer.Option(help="A model.tar.gz: an s3:// URI, or a local file (uploaded)."),
    ] = None,
    image: Annotated[
        str | None, typer.Option(help="The serving image (with --job: the job's by default).")
    ] = None,
    instance_type: Annotated[str, typer.Option(help="The instances' type.")] = "ml.m5.large",
    instance_count: Annotated[int, typer.Option(min=1, help="How many instances.")] = 1,
    env: Annotated[
        list[str] | None, typer.Option("--env", help="KEY=VALUE in the model's environment.")
    ] = None,
    wait: Annotated[bool, typer.Option(help="Follow the endpoint until it serves.")] = True,
) -> None:
    """Deploy a model to a new endpoint: from a training job, or a model archive and an image."""
    if (job is None) == (model_data is None):
        raise fail("give --job or --model-data (with --image)")
    try:
        settings = load_settings()
    except SettingsError as exc:
        raise fail(str(exc)) from None
    calls = SageMakerCalls(settings)
    try:
        container, role = _container(calls, settings, name, job, model_data, image)
        container["Environment"] = {**container.get("Environment", {}), **_pairs(env or [])}
        model: dict[str, Any] = {"ModelName": name, "PrimaryContainer": container}
        if role:
            model["ExecutionRoleArn"] = role
        calls.call("CreateModel", **model)
        console.print(f"Created model {name} ({container['Image']})")
        variant = {"VariantName": "AllTraffic", "ModelName": name, "InstanceType": instance_type,
                   "InitialInstanceCount": instance_count}  # fmt: skip
        calls.call("CreateEndpointConfig", EndpointConfigName=name, ProductionVariants=[variant])
        console.print(f"Created endpoint configuration {name}")
        calls.call("CreateEndpoint", EndpointName=name, EndpointConfigName=name)
        console.print(f"Creating endpoint {name}")
        if wait:
            _follow(calls, name)
    except CallFailed as exc:
        raise fail(str(exc)) from None


def _container(
    calls: SageMakerCalls,
    settings: Settings,
    name: str,
    job: str | None,
    model_data: str | None,
    image: str | None,
) -> tuple[dict[str, Any], str | None]:
    """The model's container definition, and its role (the job's)."""
    if job is not None:
        found = calls.call("DescribeTrainingJob", TrainingJobName=job)
        if found["TrainingJobStatus"] != "Completed":
            raise CallFailed(
                f"training job {job} is {found['TrainingJobStatus']}: only a Completed job's "
                "model can be deployed"
            )
        artifacts = found.get("ModelArtifacts", {}).get("S3ModelArtifacts")
        if not artifacts:
            raise CallFailed(f"training job {job} has no model artifacts")
        hyperparameters = found.get("HyperParameters") or {}
        environment = {
            variable: _hyperparameter(hyperparameters[key])
            for key, variable in _SCRIPT_MODE.items()
            if key in hyperparameters
        }
        chosen = image or found["AlgorithmSpecification"].get("TrainingImage")
        if not chosen:
            raise CallFailed(f"training job {job} names no image: give --image")
        container = {"Image": chosen, "ModelDataUrl": artifacts, "Environment": environment}
        return container, found.get("RoleArn")
    assert model_data is not None
    if image is None:
        raise CallFailed("--model-data needs --image: the image that serves the model")
    if not model_data.startswith("s3://"):
        model_data = _upload(calls, settings, Path(model_data), name)
    return {"Image": image, "ModelDataUrl": model_data}, None


def _hyperparameter(value: str) -> str:
    """The SDK v2 writes hyperparameters JSON-encoded ('"train.py"')."""
    try:
        decoded = json.loads(value)
    except ValueError:
        return value
    return decoded if isinstance(decoded, str) else value


def _upload(calls: SageMakerCalls, settings: Settings, archive: Path, name: str) -> str:
    """`archive` put in the SDK's default bucket (sagemaker-<region>-<account>); its URI."""
    if not archive.is_file():
        raise CallFailed(f"{archive} is not a file (give a model.tar.gz or an s3:// URI)")
    bucket = f"sagemaker-{settings.region}-{settings.account_id}"
    key = f"{name}/model.tar.gz"
    data = archive.read_bytes()
    if calls.remote:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        s3 = boto3.session.Session().client("s3")
        try:
            try:
                s3.head_bucket(Bucket=bucket)
            except ClientError:
                s3.create_bucket(Bucket=bucket)
            s3.put_object(Bucket=bucket, Key=key, Body=data)
        except (BotoCoreError, ClientError) as exc:
            raise CallFailed(f"cannot upload {archive} to s3://{bucket}/{key}: {exc}") from None
    else:
        import obstore

        from openmaker.store.errors import StoreError
        from openmaker.store.location import resolve

        try:
            location = resolve(f"s3://{bucket}/{key}", settings.store)
            obstore.put(location.store, location.key, data)
        except (StoreError, OSError) as exc:
            raise CallFailed(f"cannot upload {archive} to s3://{bucket}/{key}: {exc}") from None
    console.print(f"Uploaded {archive} to s3://{bucket}/{key}")
    return f"s3://{bucket}/{key}"


def _follow(calls: SageMakerCalls, name: str) -> None:
    """The endpoint's status until InService (or Failed: its reason, exit status 1)."""
    with console.status(f"Endpoint {name}: Creating") as shown:
        while True:
            found = calls.call("DescribeEndpoint", EndpointName=name)
            status = found["EndpointStatus"]
            variants = found.get("ProductionVariants", [])
            ready = sum(v.get("CurrentInstanceCount", 0) for v in variants)
            shown.update(f"Endpoint {name}: {status} ({ready} instances serving)")
            if status == "InService":
                break
            if status == "Failed":
                raise CallFailed(f"endpoint {name} failed: {found.get('FailureReason', '')}")
            time.sleep(POLL_SECONDS)
    console.print(f"Endpoint {name} is InService")


def _pairs(values: list[str]) -> dict[str, str]:
    result = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            raise fail(f"--env takes KEY=VALUE, not {value!r}")
        result[key] = rest
    return result
