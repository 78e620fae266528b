"""InvokeEndpoint through `openmaker server` once the lane (openmaker/api/lane.py) has taken the
connection: the same answers, errors and metrics as the Python path, and whatever the lane does
not take still answered on the same connection."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from openmaker.api import lane
from tests.apiserver import ApiServer
from tests.test_endpoint_metrics import cloudwatch, statistic
from tests.test_endpoints import SERVE, Deployer, deployer, wait_until

__all__ = ["deployer"]  # the fixture, used by name


def test_the_lane_is_built() -> None:
    """scripts/install.sh installs what it needs: where it is missing, it was not built."""
    assert lane.available()


def call(
    server: ApiServer,
    connection: http.client.HTTPConnection,
    path: str,
    body: bytes,
    headers: dict[str, str] | None = None,
    secret: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One signed request on `connection` (kept alive): status, headers, body."""
    url = f"{server.env['AWS_ENDPOINT_URL_SAGEMAKER']}{path}"
    request = AWSRequest("POST", url, data=body, headers=headers or {})
    keys = Credentials(
        server.env["AWS_ACCESS_KEY_ID"], secret or server.env["AWS_SECRET_ACCESS_KEY"]
    )
    SigV4Auth(keys, "sagemaker", server.env["AWS_REGION"]).add_auth(request)
    connection.request("POST", path, body=body, headers=dict(request.headers.items()))
    answer = connection.getresponse()
    return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()


def log_of(server: ApiServer) -> str:
    return (server.home.parent / f"{server.home.name}-server.log").read_text(errors="replace")


@pytest.mark.skipif(not lane.available(), reason="the lane is not built")
def test_a_kept_connection_is_answered_by_the_lane_as_by_python(
    deployer: Deployer, api_server: ApiServer
) -> None:
    name = deployer.endpoint(deployer.model(SERVE, {"weights.txt": b"w7"}, GREETING="hi"))
    assert deployer.wait(name)["EndpointStatus"] == "InService"
    parts = urlsplit(api_server.env["AWS_ENDPOINT_URL_SAGEMAKER"])
    assert parts.hostname is not None and parts.port is not None
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    path = f"/endpoints/{name}/invocations"
    announced = f"the invocation lane answers {name}'s kept connections"
    sent = 0

    def invoked() -> bool:
        nonlocal sent
        status, headers, body = call(
            api_server, connection, path, b"data", {"X-Amzn-SageMaker-Custom-Attributes": "a=1"}
        )
        sent += 1
        assert (status, body) == (200, b"w7 hi data")
        assert headers["x-amzn-invoked-production-variant"] == "AllTraffic"
        assert headers["x-amzn-sagemaker-custom-attributes"] == "seen=a=1"
        return announced in log_of(api_server)

    wait_until(invoked, "the lane to take the connection", timeout=30)
    for _ in range(5):  # answered by the lane now
        assert invoked()

    # A container's 4xx: the runtime's ModelError, as the Python path spells it.
    status, headers, body = call(api_server, connection, path, b"fail")
    error: dict[str, Any] = json.loads(body)
    assert (status, headers["x-amzn-errortype"]) == (424, "ModelError")
    assert error["OriginalStatusCode"] == 400 and error["OriginalMessage"] == "bad input: fail"
    assert error["LogStreamArn"].endswith(
        f"/aws/sagemaker/Endpoints/{name}:log-stream:"
        f"AllTraffic/{error['LogStreamArn'].split('/')[-1]}"
    )
    # Too large an answer: refused as the Python path refuses it.
    status, headers, body = call(api_server, connection, path, b"huge")
    assert status == 424 and b"larger than" in body

    # What the lane gives back, Python answers, on the same connection.
    status, headers, body = call(api_server, connection, path, b"x", secret="wrong")
    assert (status, headers["x-amzn-errortype"]) == (400, "InvalidSignatureException")
    status, headers, body = call(api_server, connection, f"/endpoints/{name}x/invocations", b"x")
    assert (status, headers["x-amzn-errortype"]) == (400, "ValidationError")
    status, headers, body = call(
        api_server, connection, path, b"x", {"X-Amzn-SageMaker-Inference-Id": "bad\tid"}
    )
    assert (status, headers["x-amzn-errortype"]) == (400, "ValidationError")
    described = call(
        api_server,
        connection,
        "/",
        json.dumps({"EndpointName": name}).encode(),
        {
            "X-Amz-Target": "SageMaker.DescribeEndpoint",
            "Content-Type": "application/x-amz-json-1.1",
        },
    )
    assert described[0] == 200 and json.loads(described[2])["EndpointName"] == name
    assert invoked()  # and invocations go on
    connection.close()

    # Every invocation counted, whichever path answered it (the lane's every half second):
    # those answered, and the two the container failed.
    client = cloudwatch(api_server)
    wait_until(
        lambda: (statistic(client, name, "Invocations", "Sum") or (0.0,))[0] == sent + 2,
        "every invocation in the metrics",
        timeout=30,
    )
    errors = statistic(client, name, "Invocation4XXErrors", "Sum")
    assert errors is not None and errors[0] == 1.0  # the container's 400


def test_the_lane_can_be_turned_off(tmp_path: Path) -> None:
    from openmaker.settings import load_settings

    assert load_settings({"OPENMAKER_HOME": str(tmp_path)}).invoke_lane
    assert not load_settings(
        {"OPENMAKER_HOME": str(tmp_path), "OPENMAKER_INVOKE_LANE": "off"}
    ).invoke_lane
