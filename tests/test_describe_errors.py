"""Errors as SageMaker gives them: a framework job's FailureReason carries the script's own
error, and InvokeEndpoint on an endpoint that does not exist is the runtime's ValidationError."""

from __future__ import annotations

import io
import json
import re
import sys
import tarfile
import uuid

import boto3
import pytest
from botocore.exceptions import ClientError, WaiterError

from tests.apiserver import ApiServer
from tests.helpers import request
from tests.test_api_clients import new_bucket

SKLEARN_IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"
TRAIN_PY = "print('about to import')\nimport a_module_nobody_installed\n"


def test_failure_reason_carries_the_scripts_error(api_server: ApiServer) -> None:
    bucket = new_bucket(api_server)
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        member = tarfile.TarInfo("train.py")
        member.size = len(TRAIN_PY)
        tar.addfile(member, io.BytesIO(TRAIN_PY.encode()))
    api_server.client("s3").put_object(
        Bucket=bucket, Key="src/sourcedir.tar.gz", Body=archive.getvalue()
    )
    name = f"fails-{uuid.uuid4().hex[:8]}"
    body = request(name, SKLEARN_IMAGE, f"s3://{bucket}/out")
    body["HyperParameters"] = {
        "sagemaker_program": json.dumps("train.py"),
        "sagemaker_submit_directory": json.dumps(f"s3://{bucket}/src/sourcedir.tar.gz"),
    }
    sagemaker = api_server.client("sagemaker")
    sagemaker.create_training_job(**body)
    with pytest.raises(WaiterError):  # the waiter's way of saying "Failed"
        sagemaker.get_waiter("training_job_completed_or_stopped").wait(
            TrainingJobName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
        )
    described = sagemaker.describe_training_job(TrainingJobName=name)
    assert described["TrainingJobStatus"] == "Failed"
    reason = described["FailureReason"]
    # The sagemaker-training toolkit's format, the message being the script's error.
    assert reason.startswith("AlgorithmError: ExecuteUserScriptError:\nExitCode 1\n"), reason
    # The toolkit's own capture may lay the exception's name and text on lines of their own.
    message = re.search(r'\nErrorMessage "(.*?)"\nCommand ', reason, re.S)
    assert message is not None, reason
    assert re.fullmatch(
        r"ModuleNotFoundError[:\s]+No module named 'a_module_nobody_installed'", message[1]
    ), reason
    assert "\nCommand " in reason and len(reason) <= 1024
    # The log's first line says which Python ran the script, and which the image asked for.
    logs = api_server.client("logs")
    group = "/aws/sagemaker/TrainingJobs"
    stream = logs.describe_log_streams(logGroupName=group, logStreamNamePrefix=f"{name}/")[
        "logStreams"
    ][0]["logStreamName"]
    first = logs.get_log_events(logGroupName=group, logStreamName=stream, startFromHead=True)[
        "events"
    ][0]["message"]
    here = ".".join(map(str, sys.version_info[:2]))
    assert "scikit-learn image asks for Python 3" not in first  # py3: no minor version asked
    assert f"this machine's Python {here}" in first, first


def test_invoke_endpoint_that_does_not_exist(api_server: ApiServer) -> None:
    env = api_server.env
    runtime = boto3.client(
        "sagemaker-runtime",
        region_name=env["AWS_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        endpoint_url=env["AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME"],
    )
    with pytest.raises(ClientError) as caught:
        runtime.invoke_endpoint(EndpointName="nowhere", Body=b"1,2", ContentType="text/csv")
    error = caught.value.response
    account = env.get("OPENMAKER_ACCOUNT_ID", "")
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert error["Error"]["Code"] == "ValidationError"
    assert error["Error"]["Message"].startswith("Endpoint nowhere of account ")
    assert error["Error"]["Message"].endswith(f"{account} not found.")
    # Unsigned, it is refused before anything else.
    unsigned = boto3.client(
        "sagemaker-runtime",
        region_name=env["AWS_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key="not-the-secret",
        endpoint_url=env["AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME"],
    )
    with pytest.raises(ClientError) as caught:
        unsigned.invoke_endpoint(EndpointName="nowhere", Body=b"1")
    assert caught.value.response["Error"]["Code"] != "ValidationError"
