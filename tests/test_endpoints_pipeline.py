"""Inference pipelines for real: a real `openmaker server`, boto3, two containers (small Python
HTTP servers) on each instance, each listening on the port SageMaker gives it."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.helpers import unique_name
from tests.test_endpoints import Deployer, deployer, make_serve_image, pytestmark, wait_until

__all__ = ["deployer", "pytestmark"]  # the fixture, and the skip without a sandbox

# A pipeline container: on SAGEMAKER_BIND_TO_PORT, it answers `STEP[<content type>](<body>)`
# as its own content type `application/x-STEP`, STEP from its Environment.
STEP = r"""#!/usr/bin/env python3
import http.server, os
STEP = os.environ["STEP"]
low, high = map(int, os.environ["SAGEMAKER_SAFE_PORT_RANGE"].split("-"))
assert high > low
print(f"{STEP} up", flush=True)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/ping" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        answer = f"{STEP}[{self.headers['Content-Type']}]({body})".encode()
        self.send_response(200)
        self.send_header("Content-Type", f"application/x-{STEP}")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
port = int(os.environ["SAGEMAKER_BIND_TO_PORT"])
http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()
"""
ROLE = "arn:aws:iam::000000000000:role/openmaker"


def pipeline_model(deployer: Deployer, mode: str, hostnames: bool) -> str:
    name = unique_name("pipe")
    image = str(make_serve_image(deployer.tmp_path / name, STEP))
    containers: list[dict[str, Any]] = [
        {"Image": image, "Environment": {"STEP": step}} for step in ("first", "second")
    ]
    if hostnames:
        for container, hostname in zip(containers, ("prep", "predict"), strict=True):
            container["ContainerHostname"] = hostname
    deployer.sagemaker.create_model(
        ModelName=name,
        Containers=containers,
        InferenceExecutionConfig={"Mode": mode},
        ExecutionRoleArn=ROLE,
    )
    return name


def refusal(call: Any, **request: Any) -> tuple[str, str]:
    with pytest.raises(ClientError) as refused:
        call(**request)
    error = refused.value.response["Error"]
    return error["Code"], error["Message"]


def test_a_serial_pipeline_passes_each_answer_on_and_a_direct_one_targets_a_container(
    deployer: Deployer,
) -> None:
    serial = deployer.endpoint(pipeline_model(deployer, "Serial", hostnames=False))
    direct_model = pipeline_model(deployer, "Direct", hostnames=True)
    direct = deployer.endpoint(direct_model)
    assert deployer.wait(serial)["EndpointStatus"] == "InService"
    endpoint = deployer.wait(direct)
    assert endpoint["EndpointStatus"] == "InService"
    (variant,) = endpoint["ProductionVariants"]
    assert len(variant["DeployedImages"]) == 2  # one per container
    described = deployer.sagemaker.describe_model(ModelName=direct_model)
    assert described["InferenceExecutionConfig"] == {"Mode": "Direct"}
    assert [c["ContainerHostname"] for c in described["Containers"]] == ["prep", "predict"]

    # The first container's answer, with its content type, is the second one's request.
    answer = deployer.runtime.invoke_endpoint(
        EndpointName=serial, Body=b"x", ContentType="text/csv"
    )
    assert answer["Body"].read() == b"second[application/x-first](first[text/csv](x))"
    assert answer["ContentType"] == "application/x-second"

    answer = deployer.runtime.invoke_endpoint(
        EndpointName=direct, Body=b"x", ContentType="text/csv", TargetContainerHostname="predict"
    )
    assert answer["Body"].read() == b"second[text/csv](x)"

    invoke = deployer.runtime.invoke_endpoint
    code, message = refusal(invoke, EndpointName=direct, Body=b"x")
    assert code == "ValidationError" and "TargetContainerHostname" in message
    code, message = refusal(invoke, EndpointName=direct, Body=b"x", TargetContainerHostname="z")
    assert code == "ValidationError" and "z is not a container" in message
    code, message = refusal(invoke, EndpointName=serial, Body=b"x", TargetContainerHostname="z")
    assert code == "ValidationError" and "not configured for direct invocation" in message
    code, message = refusal(invoke, EndpointName=serial, Body=b"x", TargetModel="a.tar.gz")
    assert code == "ValidationError" and "not a multi-model endpoint" in message

    # Each container's output in a stream of its own: <variant>/<instance>/<hostname>.
    logs = deployer.server.client("logs")
    group = f"/aws/sagemaker/Endpoints/{direct}"

    def streams() -> list[str]:
        found = logs.describe_log_streams(logGroupName=group)["logStreams"]
        return sorted(s["logStreamName"].rsplit("/", 1)[-1] for s in found)

    wait_until(lambda: streams() == ["predict", "prep"], "a log stream per container")


def test_models_naming_their_containers_wrongly_are_refused(deployer: Deployer) -> None:
    image = str(make_serve_image(deployer.tmp_path / "step", STEP))
    create = deployer.sagemaker.create_model
    code, message = refusal(
        create,
        ModelName=unique_name("bad"),
        PrimaryContainer={"Image": image},
        Containers=[{"Image": image}],
        ExecutionRoleArn=ROLE,
    )
    assert code == "ValidationException" and "PrimaryContainer and Containers" in message
    code, message = refusal(
        create,
        ModelName=unique_name("bad"),
        Containers=[{"Image": image, "ContainerHostname": "a"}, {"Image": image}],
        ExecutionRoleArn=ROLE,
    )
    assert code == "ValidationException" and message.startswith("Containers.2.ContainerHostname")
    code, message = refusal(
        create,
        ModelName=unique_name("bad"),
        Containers=[{"Image": image}, {"Image": image, "Mode": "MultiModel"}],
        ExecutionRoleArn=ROLE,
    )
    assert code == "ValidationException" and message.startswith("Containers.2.Mode")
    code, message = refusal(
        create,
        ModelName=unique_name("bad"),
        PrimaryContainer={"Image": image, "Mode": "MultiModel"},
        ExecutionRoleArn=ROLE,
    )
    assert code == "ValidationException" and "PrimaryContainer.ModelDataUrl" in message
