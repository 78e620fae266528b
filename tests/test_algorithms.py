"""Algorithms through a real `openmaker server` and boto3: a bring-your-own-folder image with
two hyperparameters (`depth`, required, Integer 1–10; `rate`, Continuous 0–1, default 0.5) and
a required `training` channel, registered, trained with by name, and refused as SageMaker
refuses requests it does not support."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from openmaker.runtime import unavailable_reason
from tests.apiserver import ApiServer
from tests.helpers import make_image, unique_name
from tests.test_api import bucket, check_output, wait_done
from tests.test_endpoints import wait_until

# Prints its hyperparameters and a loss, and keeps them as its model.
TRAIN = """#!/bin/sh
cat /opt/ml/input/config/hyperparameters.json > /opt/ml/model/hyperparameters.json
echo "hyperparameters: $(cat /opt/ml/input/config/hyperparameters.json)"
echo "loss=0.25"
"""


def algorithm_request(name: str, image: str, **extra: Any) -> dict[str, Any]:
    return {
        "AlgorithmName": name,
        "AlgorithmDescription": "sums things",
        "TrainingSpecification": {
            "TrainingImage": image,
            "SupportedHyperParameters": [
                {
                    "Name": "depth",
                    "Type": "Integer",
                    "Range": {
                        "IntegerParameterRangeSpecification": {"MinValue": "1", "MaxValue": "10"}
                    },
                    "IsRequired": True,
                },
                {
                    "Name": "rate",
                    "Type": "Continuous",
                    "Range": {
                        "ContinuousParameterRangeSpecification": {"MinValue": "0", "MaxValue": "1"}
                    },
                    "DefaultValue": "0.5",
                },
                {
                    "Name": "kind",
                    "Type": "Categorical",
                    "Range": {"CategoricalParameterRangeSpecification": {"Values": ["a", "b"]}},
                },
            ],
            "SupportedTrainingInstanceTypes": ["ml.m5.large"],
            "SupportsDistributedTraining": False,
            "MetricDefinitions": [{"Name": "train:loss", "Regex": r"loss=([0-9.]+)"}],
            "TrainingChannels": [
                {
                    "Name": "training",
                    "IsRequired": True,
                    "SupportedContentTypes": ["text/csv"],
                    "SupportedInputModes": ["File"],
                },
                {
                    "Name": "extra",
                    "SupportedContentTypes": ["text/csv"],
                    "SupportedInputModes": ["File", "Pipe"],
                    "SupportedCompressionTypes": ["None", "Gzip"],
                },
            ],
        },
        **extra,
    }


def job_request(name: str, algorithm: str, data: str, output: str, **extra: Any) -> dict[str, Any]:
    return {
        "TrainingJobName": name,
        "RoleArn": "arn:aws:iam::123456789012:role/SageMakerRole",
        "AlgorithmSpecification": {"AlgorithmName": algorithm, "TrainingInputMode": "File"},
        "HyperParameters": {"depth": "3"},
        "InputDataConfig": [
            {
                "ChannelName": "training",
                "ContentType": "text/csv",
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": data}},
            }
        ],
        "OutputDataConfig": {"S3OutputPath": output},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 5},
        "StoppingCondition": {"MaxRuntimeInSeconds": 600},
        **extra,
    }


@pytest.fixture(scope="module")
def algorithm(api_server: ApiServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The algorithm's ARN, registered once for the module."""
    image = make_image(tmp_path_factory.mktemp("algorithm") / "image", TRAIN)
    sagemaker = api_server.client("sagemaker")
    created = sagemaker.create_algorithm(
        **algorithm_request(unique_name("summer"), str(image)),
        Tags=[{"Key": "team", "Value": "search"}],
    )
    return str(created["AlgorithmArn"])


@pytest.fixture(scope="module")
def data(api_server: ApiServer) -> tuple[str, str]:
    """An input prefix holding one CSV object, and an output path."""
    name = bucket(api_server)
    api_server.client("s3").put_object(Bucket=name, Key="in/a.csv", Body=b"1,2\n")
    return f"s3://{name}/in/", f"s3://{name}/out"


def test_an_algorithm_is_created_described_listed_and_deleted(
    api_server: ApiServer, algorithm: str, tmp_path: Path
) -> None:
    sagemaker = api_server.client("sagemaker")
    name = algorithm.rsplit("/", 1)[1]
    region, account = api_server.env["AWS_REGION"], algorithm.split(":")[4]
    assert algorithm == f"arn:aws:sagemaker:{region}:{account}:algorithm/{name}"
    described = sagemaker.describe_algorithm(AlgorithmName=name)
    check_output("DescribeAlgorithm", described)
    assert described["AlgorithmStatus"] == "Completed"  # no validation profiles to run
    assert described["TrainingSpecification"]["TrainingChannels"][0]["Name"] == "training"
    assert sagemaker.describe_algorithm(AlgorithmName=algorithm)["AlgorithmName"] == name
    assert sagemaker.list_tags(ResourceArn=algorithm)["Tags"] == [
        {"Key": "team", "Value": "search"}
    ]

    other = unique_name("other")
    image = make_image(tmp_path / "image", TRAIN)
    sagemaker.create_algorithm(**algorithm_request(other, str(image)))
    with pytest.raises(ClientError, match="already existing"):
        sagemaker.create_algorithm(**algorithm_request(other, str(image)))
    listed = sagemaker.list_algorithms(NameContains=other)
    check_output("ListAlgorithms", listed)
    assert [a["AlgorithmName"] for a in listed["AlgorithmSummaryList"]] == [other]
    first = sagemaker.list_algorithms(MaxResults=1, SortBy="Name", SortOrder="Ascending")
    assert len(first["AlgorithmSummaryList"]) == 1 and first["NextToken"]
    sagemaker.delete_algorithm(AlgorithmName=other)
    with pytest.raises(ClientError, match="no algorithm"):
        sagemaker.describe_algorithm(AlgorithmName=other)


def test_a_hyperparameter_default_that_is_out_of_range_is_refused(
    api_server: ApiServer, tmp_path: Path
) -> None:
    request = algorithm_request(unique_name("bad"), str(make_image(tmp_path / "i", TRAIN)))
    request["TrainingSpecification"]["SupportedHyperParameters"][1]["DefaultValue"] = "2"
    with pytest.raises(ClientError, match=r"SupportedHyperParameters\.2\.member.*range"):
        api_server.client("sagemaker").create_algorithm(**request)


@pytest.mark.skipif(unavailable_reason() is not None, reason="training needs the sandbox")
def test_a_job_trains_with_the_algorithm_and_its_defaults(
    api_server: ApiServer, algorithm: str, data: tuple[str, str]
) -> None:
    sagemaker = api_server.client("sagemaker")
    name = unique_name("algo-job")
    try:
        sagemaker.create_training_job(**job_request(name, algorithm, *data))
        described = wait_done(sagemaker, name)
    finally:
        if _running(sagemaker, name):
            sagemaker.stop_training_job(TrainingJobName=name)
    assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")
    check_output("DescribeTrainingJob", described)
    assert described["AlgorithmSpecification"]["AlgorithmName"] == algorithm
    assert described["HyperParameters"] == {"depth": "3", "rate": "0.5"}
    metrics = {m["MetricName"]: m["Value"] for m in described["FinalMetricDataList"]}
    assert metrics == {"train:loss": 0.25}  # the algorithm's metric definitions


def _running(sagemaker: Any, name: str) -> bool:
    try:
        status = sagemaker.describe_training_job(TrainingJobName=name)["TrainingJobStatus"]
    except ClientError:
        return False
    return bool(status == "InProgress")


Change = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Change:
    def change(request: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = request
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        if value is None:
            del target[last]
        else:
            target[last] = value

    return change


REFUSALS: dict[str, tuple[Change, str]] = {
    "unknown hyperparameter": (
        _set("HyperParameters.width", "2"),
        r"'HyperParameters\.width'.*one of the algorithm's",
    ),
    "integer out of range": (
        _set("HyperParameters.depth", "11"),
        r"'HyperParameters\.depth'.*range",
    ),
    "not an integer": (_set("HyperParameters.depth", "2.5"), r"'HyperParameters\.depth'.*integer"),
    "continuous out of range": (
        _set("HyperParameters.rate", "1.5"),
        r"'HyperParameters\.rate'.*range",
    ),
    "categorical value": (_set("HyperParameters.kind", "c"), r"'HyperParameters\.kind'.*a, b"),
    "required hyperparameter": (
        _set("HyperParameters.depth", None),
        r"null at 'HyperParameters\.depth'.*requires",
    ),
    "required channel": (
        _set("InputDataConfig.0.ChannelName", "extra"),
        r"'InputDataConfig'.*channel training",
    ),
    "unknown channel": (
        _set("InputDataConfig.0.ChannelName", "test"),
        r"'InputDataConfig\.1\.member\.ChannelName'.*algorithm's channels",
    ),
    "input mode": (
        _set("InputDataConfig.0.InputMode", "Pipe"),
        r"'InputDataConfig\.1\.member\.InputMode'",
    ),
    "content type": (
        _set("InputDataConfig.0.ContentType", "application/json"),
        r"'InputDataConfig\.1\.member\.ContentType'.*text/csv",
    ),
    "compression type": (
        _set("InputDataConfig.0.CompressionType", "Gzip"),
        r"'InputDataConfig\.1\.member\.CompressionType'",
    ),
    "instance type": (
        _set("ResourceConfig.InstanceType", "ml.c5.xlarge"),
        r"'ResourceConfig\.InstanceType'.*ml\.m5\.large",
    ),
    "distributed": (
        _set("ResourceConfig.InstanceCount", 2),
        r"'ResourceConfig\.InstanceCount'.*distributed",
    ),
    "image and algorithm": (
        _set("AlgorithmSpecification.TrainingImage", "/x"),
        r"'AlgorithmSpecification\.TrainingImage'.*null when AlgorithmName",
    ),
    "no such algorithm": (
        _set("AlgorithmSpecification.AlgorithmName", "nothing-here"),
        r"AlgorithmSpecification\.AlgorithmName: no algorithm nothing-here",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_a_job_the_algorithm_does_not_support_is_refused(
    api_server: ApiServer, algorithm: str, data: tuple[str, str], case: str
) -> None:
    change, message = REFUSALS[case]
    sagemaker = api_server.client("sagemaker")
    name = unique_name("refused")
    request = job_request(name, algorithm, *data)
    change(request)
    with pytest.raises(ClientError) as raised:
        sagemaker.create_training_job(**request)
    assert raised.value.response["Error"]["Code"] == "ValidationException"
    assert re.search(message, raised.value.response["Error"]["Message"]), json.dumps(
        raised.value.response["Error"]
    )
    with pytest.raises(ClientError, match="not found"):
        sagemaker.describe_training_job(TrainingJobName=name)


# Answers each CSV line with its count of values; the training above made its model.
SERVE = """#!/usr/bin/env python3
import http.server
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/ping" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def do_POST(self):
        lines = self.rfile.read(int(self.headers["Content-Length"])).decode().splitlines()
        answer = "".join(f"{len(line.split(','))}\\n" for line in lines).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"""

# Fails when asked for a depth of 7.
FAILING_TRAIN = """#!/bin/sh
if grep -q '"depth": *"7"' /opt/ml/input/config/hyperparameters.json; then
  echo "depth 7 does not converge" > /opt/ml/output/failure
  exit 1
fi
echo ok > /opt/ml/model/ok.txt
"""


def profile(name: str, depth: str, data: str, output: str, transform: bool) -> dict[str, Any]:
    training = job_request("unused", "unused", data, output, HyperParameters={"depth": depth})
    definition = {
        "TrainingInputMode": "File",
        **{
            k: training[k]
            for k in (
                "HyperParameters",
                "InputDataConfig",
                "OutputDataConfig",
                "ResourceConfig",
                "StoppingCondition",
            )
        },
    }
    result: dict[str, Any] = {"ProfileName": name, "TrainingJobDefinition": definition}
    if transform:
        result["TransformJobDefinition"] = {
            "TransformInput": {
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": data}},
                "ContentType": "text/csv",
                "SplitType": "Line",
            },
            "TransformOutput": {"S3OutputPath": f"{output}/transformed"},
            "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": 1},
        }
    return result


@pytest.mark.skipif(unavailable_reason() is not None, reason="validation needs the sandbox")
def test_validation_runs_each_profile_and_a_failing_one_fails_the_algorithm(
    api_server: ApiServer, data: tuple[str, str], tmp_path: Path
) -> None:
    sagemaker = api_server.client("sagemaker")
    image = make_image(tmp_path / "image", FAILING_TRAIN)
    (image / "serve").write_text(SERVE)
    (image / "serve").chmod(0o755)
    inference = {
        "Containers": [{"Image": str(image)}],
        "SupportedContentTypes": ["text/csv"],
        "SupportedResponseMIMETypes": ["text/csv"],
    }
    role = "arn:aws:iam::123456789012:role/SageMakerRole"
    good, bad = unique_name("valid"), unique_name("invalid")
    for name, profiles in (
        (good, [profile("trained-and-transformed", "3", *data, transform=True)]),
        (bad, [profile("diverges", "7", *data, transform=False)]),
    ):
        sagemaker.create_algorithm(
            **algorithm_request(name, str(image)),
            InferenceSpecification=inference,
            ValidationSpecification={"ValidationRole": role, "ValidationProfiles": profiles},
        )
    assert sagemaker.describe_algorithm(AlgorithmName=good)["AlgorithmStatus"] in (
        "Pending",
        "InProgress",
    )
    ended: dict[str, dict[str, Any]] = {}

    def validated() -> bool:
        for name in (good, bad):
            described = sagemaker.describe_algorithm(AlgorithmName=name)
            if described["AlgorithmStatus"] in ("Completed", "Failed"):
                ended[name] = described
        return len(ended) == 2

    wait_until(validated, "both algorithms validated", timeout=240)
    check_output("DescribeAlgorithm", ended[good])
    assert ended[good]["AlgorithmStatus"] == "Completed"
    assert ended[good]["AlgorithmStatusDetails"]["ValidationStatuses"] == [
        {"Name": "trained-and-transformed", "Status": "Completed"}
    ]
    # The transform ran on the model that profile's training made: one answer per CSV line.
    bucket_name, prefix = data[1].removeprefix("s3://").split("/", 1)
    answer = api_server.client("s3").get_object(
        Bucket=bucket_name, Key=f"{prefix}/transformed/a.csv.out"
    )
    assert answer["Body"].read().decode().split() == ["2"]
    assert ended[bad]["AlgorithmStatus"] == "Failed"
    # The model allows one profile per algorithm.
    (diverges,) = ended[bad]["AlgorithmStatusDetails"]["ValidationStatuses"]
    assert diverges["Status"] == "Failed"
    assert "depth 7 does not converge" in diverges["FailureReason"]
