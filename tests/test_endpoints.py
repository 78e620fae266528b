"""Endpoints for real: a real `openmaker server`, boto3's sagemaker and sagemaker-runtime
clients, a model server (a small Python HTTP server) in a local-folder image, each instance a
sandboxed container on its own bridge, listening on 8080."""

from __future__ import annotations

import contextlib
import io
import tarfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from openmaker.runtime import unavailable_reason
from tests.apiserver import ApiServer
from tests.helpers import unique_name

pytestmark = pytest.mark.skipif(
    unavailable_reason() is not None, reason="endpoints need the bwrap sandbox"
)

# A model server as a SageMaker container runs one: /ping, /invocations on 8080. It answers
# with the model file's text and the request body; `fail` in the body is a 400, `huge` a body
# over 6 MiB; it reports SIGTERM.
SERVE = """#!/usr/bin/env python3
import http.server, os, signal, sys
signal.signal(signal.SIGTERM, lambda *_: (print("got SIGTERM", flush=True), sys.exit(0)))
MODEL = open("/opt/ml/model/weights.txt").read().strip()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/ping" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if body == b"fail":
            answer, status = b"bad input: fail", 400
        elif body == b"huge":
            answer, status = b"x" * (7 * 1024 * 1024), 200
        elif body == b"inference-id":
            answer = (self.headers.get("X-Amzn-SageMaker-Inference-Id") or "none").encode()
            status = 200
        else:
            answer = f"{MODEL} {os.environ['GREETING']} {body.decode()}".encode()
            status = 200
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("X-Amzn-SageMaker-Custom-Attributes", "seen=" + (
            self.headers.get("X-Amzn-SageMaker-Custom-Attributes") or ""))
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
print("model server up", flush=True)
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"""
# A container that ends before it answers /ping.
EXITS = "#!/bin/sh\necho 'cannot load the model' >&2\nexit 3\n"


def make_serve_image(folder: Path, program: str) -> Path:
    folder.mkdir(parents=True)
    serve = folder / "serve"
    serve.write_text(program)
    serve.chmod(0o755)
    return folder


def model_archive(members: dict[str, bytes]) -> bytes:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return data.getvalue()


class Deployer:
    """Models, configs and endpoints made through the API; every endpoint deleted at the end."""

    def __init__(self, server: ApiServer, tmp_path: Path) -> None:
        self.server, self.tmp_path = server, tmp_path
        self.sagemaker = server.client("sagemaker")
        self.s3 = server.client("s3")
        self.runtime = boto3.client(
            "sagemaker-runtime",
            region_name=server.env["AWS_REGION"],
            aws_access_key_id=server.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=server.env["AWS_SECRET_ACCESS_KEY"],
            endpoint_url=server.env["AWS_ENDPOINT_URL_SAGEMAKER"],
        )
        self.endpoints: list[str] = []

    def model(self, program: str, members: dict[str, bytes], **environment: str) -> str:
        name = unique_name("model")
        image = make_serve_image(self.tmp_path / name, program)
        bucket = "models"
        with contextlib.suppress(ClientError):
            self.s3.create_bucket(Bucket=bucket)
        self.s3.put_object(Bucket=bucket, Key=f"{name}/model.tar.gz", Body=model_archive(members))
        self.sagemaker.create_model(
            ModelName=name,
            PrimaryContainer={
                "Image": str(image),
                "ModelDataUrl": f"s3://{bucket}/{name}/model.tar.gz",
                "Environment": {"GREETING": "hello", **environment},
            },
            ExecutionRoleArn="arn:aws:iam::000000000000:role/openmaker",
            Tags=[{"Key": "team", "Value": "ml"}],
        )
        return name

    def endpoint(self, model: str, count: int = 1) -> str:
        name = unique_name("ep")
        self.sagemaker.create_endpoint_config(
            EndpointConfigName=name,
            ProductionVariants=[
                {
                    "VariantName": "AllTraffic",
                    "ModelName": model,
                    "InstanceType": "ml.m5.large",
                    "InitialInstanceCount": count,
                }
            ],
        )
        self.endpoints.append(name)
        self.sagemaker.create_endpoint(EndpointName=name, EndpointConfigName=name)
        return name

    def wait(self, name: str, statuses: tuple[str, ...] = ("InService", "Failed")) -> Any:
        deadline = time.monotonic() + 120
        while True:
            described = self.sagemaker.describe_endpoint(EndpointName=name)
            if described["EndpointStatus"] in statuses:
                return described
            assert time.monotonic() < deadline, described
            time.sleep(0.2)

    def gone(self, name: str) -> bool:
        try:
            self.sagemaker.describe_endpoint(EndpointName=name)
        except ClientError as error:
            assert error.response["Error"]["Code"] == "ValidationException"
            return True
        return False

    def delete_all(self) -> None:
        for name in self.endpoints:
            try:
                self.sagemaker.delete_endpoint(EndpointName=name)
            except ClientError:
                continue
        for name in self.endpoints:
            wait_until(partial(self.gone, name), f"endpoint {name} deleted")


def wait_until(condition: Callable[[], object], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def deployer(api_server: ApiServer, tmp_path: Path) -> Iterator[Deployer]:
    deploy = Deployer(api_server, tmp_path)
    try:
        yield deploy
    finally:
        deploy.delete_all()


def bridges_of(endpoint: str) -> list[str]:
    """The bridges (and veth ends) whose alias names the endpoint (other tests' come and go)."""
    found = []
    for link in Path("/sys/class/net").glob("omn*"):
        try:
            alias = (link / "ifalias").read_text().strip()
        except OSError:
            continue
        # Keyed apart from a training job of the same name (serving/kind.py).
        if alias.endswith(f":endpoint:{endpoint}"):
            found.append(link.name)
    return found


def test_an_endpoint_serves_its_model_and_goes_with_its_containers(deployer: Deployer) -> None:
    model = deployer.model(SERVE, {"weights.txt": b"w42\n"})
    name = deployer.endpoint(model, count=2)
    described = deployer.wait(name)
    assert described["EndpointStatus"] == "InService", described.get("FailureReason")
    (variant,) = described["ProductionVariants"]
    assert variant["CurrentInstanceCount"] == variant["DesiredInstanceCount"] == 2
    (bridge,) = bridges_of(name)  # the endpoint's own
    assert len(list(Path("/sys/class/net").glob(f"{bridge}v*"))) == 2  # an instance's veth each

    answer = deployer.runtime.invoke_endpoint(
        EndpointName=name,
        Body=b"data",
        ContentType="text/plain",
        CustomAttributes="trace=1",
    )
    assert answer["Body"].read() == b"w42 hello data"
    assert answer["ContentType"] == "text/plain"
    assert answer["InvokedProductionVariant"] == "AllTraffic"
    assert answer["CustomAttributes"] == "seen=trace=1"

    # An InferenceId reaches the container; one the model's constraints refuse does not.
    answer = deployer.runtime.invoke_endpoint(
        EndpointName=name, Body=b"inference-id", InferenceId="req 7!"
    )
    assert answer["Body"].read() == b"req 7!"
    # Non-ASCII (botocore sends it as UTF-8, signed as such) is refused by the pattern, not
    # by the signature check.
    for bad in ("x" * 65, "tab\tinside", "日本", "caf\u00e9"):
        with pytest.raises(ClientError) as malformed:
            deployer.runtime.invoke_endpoint(EndpointName=name, Body=b"data", InferenceId=bad)
        assert malformed.value.response["Error"]["Code"] == "ValidationError"
        assert "'inferenceId'" in malformed.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as shown:
        deployer.runtime.invoke_endpoint(EndpointName=name, Body=b"data", InferenceId="日本")
    assert "'日本'" in shown.value.response["Error"]["Message"]

    # The container's 4xx is a ModelError with its status and message.
    with pytest.raises(ClientError) as refused:
        deployer.runtime.invoke_endpoint(EndpointName=name, Body=b"fail")
    error: dict[str, Any] = dict(refused.value.response)
    assert error["Error"]["Code"] == "ModelError"
    assert error["OriginalStatusCode"] == 400
    assert error["OriginalMessage"] == "bad input: fail"

    # An answer over 6 MiB is never passed on whole.
    with pytest.raises(ClientError) as huge:
        deployer.runtime.invoke_endpoint(EndpointName=name, Body=b"huge")
    assert huge.value.response["Error"]["Code"] == "ModelError"
    assert "larger than" in huge.value.response["Error"]["Message"]

    # The instances' output is in the endpoint's log group.
    logs = deployer.server.client("logs")
    group = f"/aws/sagemaker/Endpoints/{name}"
    wait_until(
        lambda: len(logs.describe_log_streams(logGroupName=group)["logStreams"]) == 2,
        "both instances' log streams",
    )
    stream = logs.describe_log_streams(logGroupName=group)["logStreams"][0]["logStreamName"]
    assert stream.startswith("AllTraffic/i-")

    deployer.sagemaker.delete_endpoint(EndpointName=name)
    wait_until(lambda: deployer.gone(name), "the endpoint to go")
    assert bridges_of(name) == []  # its bridge and the instances' veths went with it
    assert not list(Path("/sys/class/net").glob(f"{bridge}*"))
    events = logs.get_log_events(logGroupName=group, logStreamName=stream)["events"]
    messages = [e["message"] for e in events]
    assert "got SIGTERM" in messages


def test_a_container_that_ends_before_ping_fails_the_endpoint(deployer: Deployer) -> None:
    model = deployer.model(EXITS, {"weights.txt": b"w\n"})
    name = deployer.endpoint(model)
    described = deployer.wait(name)
    assert described["EndpointStatus"] == "Failed"
    reason = described["FailureReason"]
    assert "production variant AllTraffic did not pass the ping health check" in reason
    assert "instance i-" in reason and "exited with status 3" in reason
    # What it said last, as a person would look for it in the log.
    assert 'its last output: "cannot load the model"' in reason
    with pytest.raises(ClientError) as refused:
        deployer.runtime.invoke_endpoint(EndpointName=name, Body=b"x")
    assert refused.value.response["Error"]["Code"] == "ValidationError"


def test_an_archive_member_escaping_the_model_folder_fails_the_endpoint(
    deployer: Deployer,
) -> None:
    model = deployer.model(SERVE, {"weights.txt": b"w\n", "../evil": b"out"})
    name = deployer.endpoint(model)
    described = deployer.wait(name)
    assert described["EndpointStatus"] == "Failed"
    assert "was refused" in described["FailureReason"]
    assert "../evil" in described["FailureReason"] or "evil" in described["FailureReason"]


def test_bad_requests_name_the_member(deployer: Deployer, tmp_path: Path) -> None:
    sagemaker, runtime = deployer.sagemaker, deployer.runtime
    with pytest.raises(ClientError) as bad_name:
        sagemaker.create_endpoint(EndpointName="a/../b", EndpointConfigName="c")
    assert bad_name.value.response["Error"]["Code"] == "ValidationException"
    assert "'EndpointName'" in bad_name.value.response["Error"]["Message"]

    with pytest.raises(ClientError) as missing:
        sagemaker.create_endpoint_config(
            EndpointConfigName=unique_name("cfg"),
            ProductionVariants=[
                {
                    "VariantName": "v",
                    "ModelName": "no-such-model",
                    "InstanceType": "ml.m5.large",
                    "InitialInstanceCount": 1,
                }
            ],
        )
    assert "ProductionVariants.1.ModelName" in missing.value.response["Error"]["Message"]

    with pytest.raises(ClientError) as no_image:
        sagemaker.create_model(
            ModelName=unique_name("m"),
            PrimaryContainer={"Image": str(tmp_path / "nowhere")},
            ExecutionRoleArn="arn:aws:iam::000000000000:role/openmaker",
        )
    assert "PrimaryContainer.Image" in no_image.value.response["Error"]["Message"]

    # Path tricks in the runtime's URL name no endpoint.
    for trick in ("a..b", "%2e%2e", "x%2Fy", "a b", "-x"):
        with pytest.raises(ClientError) as refused:
            runtime.invoke_endpoint(EndpointName=trick, Body=b"x")
        assert refused.value.response["Error"]["Code"] == "ValidationError", trick
    # `..` is resolved by the client before it is signed: the request is refused all the same.
    with pytest.raises(ClientError):
        runtime.invoke_endpoint(EndpointName="..", Body=b"x")


def test_models_and_configs_list_page_tag_and_delete(deployer: Deployer) -> None:
    sagemaker = deployer.sagemaker
    names = [deployer.model(SERVE, {"weights.txt": b"w\n"}) for _ in range(3)]
    seen: list[str] = []
    params: dict[str, Any] = {"MaxResults": 2, "NameContains": "model", "SortBy": "Name"}
    while True:
        page = sagemaker.list_models(**params)
        assert len(page["Models"]) <= 2
        seen += [m["ModelName"] for m in page["Models"]]
        if "NextToken" not in page:
            break
        params["NextToken"] = page["NextToken"]
    assert seen == sorted(seen, reverse=True)  # Descending unless asked otherwise
    assert set(names) <= set(seen)
    described = sagemaker.describe_model(ModelName=names[0])
    arn = described["ModelArn"]
    assert sagemaker.list_tags(ResourceArn=arn)["Tags"] == [{"Key": "team", "Value": "ml"}]
    sagemaker.add_tags(ResourceArn=arn, Tags=[{"Key": "stage", "Value": "test"}])
    assert len(sagemaker.list_tags(ResourceArn=arn)["Tags"]) == 2
    sagemaker.delete_model(ModelName=names[0])
    with pytest.raises(ClientError) as gone:
        sagemaker.describe_model(ModelName=names[0])
    assert "Could not find model" in gone.value.response["Error"]["Message"]
