"""Model packages through a real `openmaker server` and boto3: groups and their versions,
approval, a package validated by a transform job and served by an endpoint whose model names
it; the CLI's `algorithms` and `model-packages` commands."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from openmaker.runtime import unavailable_reason
from tests.apiserver import ApiServer, openmaker_command
from tests.helpers import unique_name
from tests.test_algorithms import algorithm_request
from tests.test_api import check_output
from tests.test_endpoints import Deployer, deployer, make_serve_image, model_archive, wait_until

__all__ = ["deployer"]  # the fixture, for the test below

# Answers with the model's file (unpacked under /opt/ml/model) and what it was sent.
SERVE = """#!/usr/bin/env python3
import http.server
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/ping" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def do_POST(self):
        sent = self.rfile.read(int(self.headers["Content-Length"]))
        answer = open("/opt/ml/model/m.txt", "rb").read() + b":" + sent
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"""


def inference(image: str, data: str) -> dict[str, Any]:
    return {
        "Containers": [{"Image": image, "ModelDataUrl": data}],
        "SupportedContentTypes": ["text/plain"],
        "SupportedResponseMIMETypes": ["text/plain"],
    }


def test_a_group_holds_versions_that_are_approved_listed_and_deleted(
    api_server: ApiServer, tmp_path: Path
) -> None:
    sagemaker = api_server.client("sagemaker")
    group = unique_name("group")
    created = sagemaker.create_model_package_group(
        ModelPackageGroupName=group, ModelPackageGroupDescription="rankers"
    )
    assert created["ModelPackageGroupArn"].endswith(f":model-package-group/{group}")
    check_output(
        "DescribeModelPackageGroup",
        sagemaker.describe_model_package_group(ModelPackageGroupName=group),
    )
    spec = inference(str(tmp_path), "s3://models/m.tar.gz")
    arns = [
        sagemaker.create_model_package(ModelPackageGroupName=group, InferenceSpecification=spec)[
            "ModelPackageArn"
        ]
        for _ in range(2)
    ]
    assert [arn.rsplit(":", 1)[1] for arn in arns] == [
        f"model-package/{group}/1",
        f"model-package/{group}/2",
    ]
    described = sagemaker.describe_model_package(ModelPackageName=arns[1])
    check_output("DescribeModelPackage", described)
    assert described["ModelPackageName"] == group and described["ModelPackageVersion"] == 2
    assert described["ModelApprovalStatus"] == "PendingManualApproval"
    sagemaker.update_model_package(ModelPackageArn=arns[1], ModelApprovalStatus="Approved")
    approved = sagemaker.list_model_packages(
        ModelPackageGroupName=group, ModelApprovalStatus="Approved"
    )
    check_output("ListModelPackages", approved)
    assert [p["ModelPackageArn"] for p in approved["ModelPackageSummaryList"]] == [arns[1]]

    with pytest.raises(ClientError, match="delete them first"):
        sagemaker.delete_model_package_group(ModelPackageGroupName=group)
    for arn in arns:
        sagemaker.delete_model_package(ModelPackageName=arn)
    sagemaker.delete_model_package_group(ModelPackageGroupName=group)
    with pytest.raises(ClientError, match="no model package group"):
        sagemaker.describe_model_package_group(ModelPackageGroupName=group)


def test_a_package_needs_a_name_or_a_group_not_both(api_server: ApiServer) -> None:
    sagemaker = api_server.client("sagemaker")
    with pytest.raises(ClientError, match=r"ModelPackageName .* or ModelPackageGroupName"):
        sagemaker.create_model_package(
            InferenceSpecification=inference("/nowhere", "s3://models/m.tar.gz")
        )


@pytest.mark.skipif(unavailable_reason() is not None, reason="endpoints need the sandbox")
def test_a_model_that_names_a_package_serves_it(
    api_server: ApiServer, deployer: Deployer, tmp_path: Path
) -> None:
    sagemaker, s3 = api_server.client("sagemaker"), api_server.client("s3")
    name = unique_name("pkg")
    image = make_serve_image(tmp_path / "image", SERVE)
    s3.create_bucket(Bucket=name)
    s3.put_object(Bucket=name, Key="model.tar.gz", Body=model_archive({"m.txt": b"ranker"}))
    s3.put_object(Bucket=name, Key="in/a.txt", Body=b"x")
    arn = sagemaker.create_model_package(
        ModelPackageName=name,
        InferenceSpecification=inference(str(image), f"s3://{name}/model.tar.gz"),
        ValidationSpecification={
            "ValidationRole": "arn:aws:iam::000000000000:role/openmaker",
            "ValidationProfiles": [{"ProfileName": "transforms", "TransformJobDefinition": {
                "TransformInput": {"DataSource": {"S3DataSource": {
                    "S3DataType": "S3Prefix", "S3Uri": f"s3://{name}/in/"
                }}},
                "TransformOutput": {"S3OutputPath": f"s3://{name}/out"},
                "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": 1},
            }}],
        },
    )["ModelPackageArn"]  # fmt: skip
    found: dict[str, Any] = {}

    def validated() -> bool:
        found.update(sagemaker.describe_model_package(ModelPackageName=name))
        return found["ModelPackageStatus"] in ("Completed", "Failed")

    wait_until(validated, "the package validated")
    check_output("DescribeModelPackage", found)
    assert found["ModelPackageStatus"] == "Completed", found["ModelPackageStatusDetails"]
    assert found["ModelPackageStatusDetails"]["ValidationStatuses"] == [
        {"Name": "transforms", "Status": "Completed"}
    ]
    # The validation's transform ran the package's container over the package's model.
    output = s3.get_object(Bucket=name, Key="out/a.txt.out")["Body"].read()
    assert output == b"ranker:x"
    sagemaker.create_model(
        ModelName=name,
        PrimaryContainer={"ModelPackageName": arn},
        ExecutionRoleArn="arn:aws:iam::000000000000:role/openmaker",
    )
    model = sagemaker.describe_model(ModelName=name)["PrimaryContainer"]
    assert model["ModelPackageName"] == arn and model["Image"] == str(image)
    endpoint = deployer.endpoint(name)
    assert deployer.wait(endpoint)["EndpointStatus"] == "InService"
    answer = deployer.runtime.invoke_endpoint(
        EndpointName=endpoint, Body=b"q", ContentType="text/plain"
    )
    assert answer["Body"].read() == b"ranker:q"


def test_the_cli_lists_and_describes_algorithms_and_packages(
    api_server: ApiServer, tmp_path: Path
) -> None:
    sagemaker = api_server.client("sagemaker")
    algorithm, package = unique_name("cli-algo"), unique_name("cli-pkg")
    sagemaker.create_algorithm(**algorithm_request(algorithm, str(tmp_path)))
    sagemaker.create_model_package(
        ModelPackageName=package, InferenceSpecification=inference(str(tmp_path), "s3://m/m")
    )
    remote = {**os.environ, **api_server.env}
    # The same, read from the server's database by the command itself.
    local = {k: v for k, v in remote.items() if not k.startswith("AWS_ENDPOINT_URL")} | {
        "OPENMAKER_HOME": str(api_server.home)
    }

    def cli(env: dict[str, str], *args: str) -> str:
        done = subprocess.run(
            [*openmaker_command(), *args], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert algorithm in cli(remote, "algorithms", "list")
    assert "depth (Integer, required)" in cli(remote, "algorithms", "describe", algorithm)
    assert package in cli(remote, "model-packages", "list")
    described = json.loads(cli(remote, "model-packages", "describe", package, "--json"))
    assert described["ModelPackageStatus"] == "Completed"
    described = json.loads(cli(local, "algorithms", "describe", algorithm, "--json"))
    assert described["AlgorithmStatus"] == "Completed"
    missing = subprocess.run(
        [*openmaker_command(), "algorithms", "describe", "nothing-here"],
        env=remote,
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1 and "no algorithm nothing-here" in missing.stderr


def test_an_additional_data_source_is_refused_not_ignored(
    api_server: ApiServer, tmp_path: Path
) -> None:
    sagemaker = api_server.client("sagemaker")
    source = {"S3DataType": "S3Prefix", "S3Uri": "s3://models/extra/"}
    request = algorithm_request(unique_name("extra"), str(tmp_path))
    request["TrainingSpecification"]["AdditionalS3DataSource"] = source
    with pytest.raises(ClientError, match=r"'TrainingSpecification\.AdditionalS3DataSource'"):
        sagemaker.create_algorithm(**request)
    spec = inference(str(tmp_path), "s3://models/m.tar.gz")
    spec["Containers"][0]["AdditionalS3DataSource"] = source
    member = r"'InferenceSpecification\.Containers\.1\.member\.AdditionalS3DataSource'"
    with pytest.raises(ClientError, match=member):
        sagemaker.create_model_package(
            ModelPackageName=unique_name("extra"), InferenceSpecification=spec
        )
