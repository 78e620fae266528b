"""Shadow variants for real: a real `openmaker server`, boto3's sagemaker, sagemaker-runtime,
cloudwatch and s3 clients, a production and a shadow model server in sandboxed containers.
The caller always gets the production variant's answer; the shadow gets copies, measured and
captured under its own name."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from openmaker.runtime import unavailable_reason
from tests.helpers import unique_name
from tests.test_endpoint_metrics import cloudwatch, statistic
from tests.test_endpoints import SERVE, Deployer, deployer, wait_until

__all__ = ["deployer"]  # the fixture, used by name

pytestmark = pytest.mark.skipif(
    unavailable_reason() is not None, reason="endpoints need the bwrap sandbox"
)

BUCKET = "models"  # made by Deployer.model
# The candidate model's server: `shadow <body>`; `crash` is a 500; `hang` waits until the test
# puts `release` in its image folder (shown at /opt/program).
CANDIDATE = """#!/usr/bin/env python3
import http.server, os, time
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def do_GET(self):
        self.send_response(200 if self.path == "/ping" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        while body == b"hang" and not os.path.exists("/opt/program/release"):
            time.sleep(0.05)
        answer = b"shadow " + body
        self.send_response(500 if body == b"crash" else 200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"""


def variant(name: str, model: str, weight: float = 1.0) -> dict[str, Any]:
    return {
        "VariantName": name,
        "ModelName": model,
        "InstanceType": "ml.m5.large",
        "InitialInstanceCount": 1,
        "InitialVariantWeight": weight,
    }


def captured(deployer: Deployer, prefix: str) -> list[dict[str, Any]]:
    listed = deployer.s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    lines = []
    for item in listed.get("Contents", []):
        body = deployer.s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
        lines += [json.loads(line) for line in body.decode().splitlines()]
    return lines


def test_the_shadow_gets_copies_and_never_answers_then_is_promoted(
    deployer: Deployer, tmp_path: Path
) -> None:
    production = deployer.model(SERVE, {"weights.txt": b"prod\n"})
    candidate = deployer.model(CANDIDATE, {})
    name = unique_name("shadow")
    deployer.sagemaker.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[variant("Live", production)],
        # As heavy as the production variant: every invocation is copied.
        ShadowProductionVariants=[variant("Shadow", candidate)],
        DataCaptureConfig={
            "EnableCapture": True,
            "InitialSamplingPercentage": 100,
            "DestinationS3Uri": f"s3://{BUCKET}/capture",
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        },
    )
    assert deployer.sagemaker.describe_endpoint_config(EndpointConfigName=name)[
        "ShadowProductionVariants"
    ] == [variant("Shadow", candidate)]
    deployer.endpoints.append(name)
    deployer.sagemaker.create_endpoint(EndpointName=name, EndpointConfigName=name)
    described = deployer.wait(name)
    assert described["EndpointStatus"] == "InService", described.get("FailureReason")
    assert [v["VariantName"] for v in described["ProductionVariants"]] == ["Live"]
    (shadow,) = described["ShadowProductionVariants"]
    assert shadow["VariantName"] == "Shadow" and shadow["CurrentInstanceCount"] == 1

    # The first copy hangs in the shadow until released: no caller waits for it.
    bodies = [b"hang", b"a", b"b", b"crash", b"c", b"crash"]
    for body in bodies:
        answer = deployer.runtime.invoke_endpoint(EndpointName=name, Body=body)
        assert answer["Body"].read() == b"prod hello " + body
        assert answer["InvokedProductionVariant"] == "Live"
    with pytest.raises(ClientError) as targeted:
        deployer.runtime.invoke_endpoint(EndpointName=name, Body=b"x", TargetVariant="Shadow")
    assert targeted.value.response["Error"]["Code"] == "ValidationError"

    # Each copy was sent to the shadow and measured there, the one it holds once it answers;
    # its 500s reached no caller.
    client = cloudwatch(deployer.server)

    def shadow_calls() -> tuple[float, str] | None:
        return statistic(client, name, "Invocations", "Sum", "Shadow")

    wait_until(lambda: shadow_calls() == (5.0, "None"), "the shadow's answered copies counted")
    (tmp_path / candidate / "release").touch()
    wait_until(lambda: shadow_calls() == (6.0, "None"), "the held copy counted")
    assert statistic(client, name, "Invocation5XXErrors", "Sum", "Shadow") == (2.0, "None")
    assert statistic(client, name, "Invocations", "Sum", "Live") == (6.0, "None")
    assert statistic(client, name, "Invocation5XXErrors", "Sum", "Live") == (0.0, "None")
    # Its answers are captured under its name.
    shadow_prefix = f"capture/{name}/Shadow/"
    wait_until(lambda: len(captured(deployer, shadow_prefix)) == 4, "the shadow's answers")
    outputs = sorted(
        base64.b64decode(c["captureData"]["endpointOutput"]["data"])
        for c in captured(deployer, shadow_prefix)
    )
    assert outputs == [b"shadow a", b"shadow b", b"shadow c", b"shadow hang"]

    # Promoting the shadow: its model becomes the production variant, no shadow left.
    promoted = unique_name("promoted")
    deployer.sagemaker.create_endpoint_config(
        EndpointConfigName=promoted, ProductionVariants=[variant("Live", candidate)]
    )
    deployer.sagemaker.update_endpoint(EndpointName=name, EndpointConfigName=promoted)
    described = deployer.wait(name, ("InService",))
    assert described["EndpointConfigName"] == promoted, described.get("FailureReason")
    assert "ShadowProductionVariants" not in described
    answer = deployer.runtime.invoke_endpoint(EndpointName=name, Body=b"a")
    assert answer["Body"].read() == b"shadow a"


def test_bad_shadow_configs_name_the_member(deployer: Deployer) -> None:
    model = deployer.model(SERVE, {"weights.txt": b"w\n"})
    asks: list[tuple[dict[str, Any], str]] = [
        (
            {
                "ProductionVariants": [variant("a", model), variant("b", model)],
                "ShadowProductionVariants": [variant("s", model)],
            },
            "ProductionVariants:",
        ),
        (
            {
                "ProductionVariants": [variant("a", model)],
                "ShadowProductionVariants": [variant("s", model), variant("t", model)],
            },
            "ShadowProductionVariants:",
        ),
        (
            {
                "ProductionVariants": [variant("a", model)],
                "ShadowProductionVariants": [variant("a", model)],
            },
            "ShadowProductionVariants.1.VariantName",
        ),
        (
            {
                "ProductionVariants": [variant("a", model)],
                "ShadowProductionVariants": [variant("s", "no-such-model")],
            },
            "ShadowProductionVariants.1.ModelName: Could not find model",
        ),
        (
            {
                "ProductionVariants": [variant("a", model)],
                "ShadowProductionVariants": [variant("s", model)],
                "AsyncInferenceConfig": {"OutputConfig": {"S3OutputPath": "s3://b/out"}},
            },
            "ShadowProductionVariants:",
        ),
        (
            {
                "ProductionVariants": [variant("a", model)],
                "ShadowProductionVariants": [
                    {
                        "VariantName": "s",
                        "ModelName": model,
                        "ServerlessConfig": {"MemorySizeInMB": 1024, "MaxConcurrency": 1},
                    }
                ],
            },
            "ShadowProductionVariants.1.ServerlessConfig",
        ),
    ]
    for ask, member in asks:
        with pytest.raises(ClientError) as refused:
            deployer.sagemaker.create_endpoint_config(EndpointConfigName=unique_name("c"), **ask)
        error = refused.value.response["Error"]
        assert error["Code"] == "ValidationException", ask
        assert error["Message"].startswith(member), (member, error["Message"])
