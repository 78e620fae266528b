"""InvokeEndpointWithResponseStream for real: a model server in a local-folder image answering
chunked, relayed as the event stream boto3's sagemaker-runtime client parses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EventStreamError

from openmaker.runtime import unavailable_reason
from tests.apiserver import ApiServer, running_api_server
from tests.test_endpoint_metrics import cloudwatch, statistic
from tests.test_endpoints import Deployer, wait_until

pytestmark = pytest.mark.skipif(
    unavailable_reason() is not None, reason="endpoints need the bwrap sandbox"
)

# Answers chunked: a first part at once, then (for "gated") waits until the test puts a file
# `go` beside this program (the image folder is /opt/program) before the last part, or for
# "forever" a part every 0.1 s without end; `fail` is a 400 before any part.
STREAMING = """#!/usr/bin/env python3
import http.server, os, time
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def part(self, data):
        self.wfile.write(b"%x\\r\\n%s\\r\\n" % (len(data), data))
        self.wfile.flush()
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if body == b"fail":
            self.send_response(400)
            self.send_header("Content-Length", "7")
            self.end_headers()
            self.wfile.write(b"refused")
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.part(b"first ")
        if body == b"forever":
            while True:
                self.part(b"tick ")
                time.sleep(0.1)
        waited = 0.0
        while not os.path.exists("/opt/program/go") and waited < 60:
            time.sleep(0.05)
            waited += 0.05
        self.part(b"after the gate" if waited < 60 else b"late")
        self.wfile.write(b"0\\r\\n\\r\\n")
        self.wfile.flush()
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"""


@pytest.fixture
def deployer(api_server: ApiServer, tmp_path: Path) -> Iterator[Deployer]:
    deploy = Deployer(api_server, tmp_path)
    try:
        yield deploy
    finally:
        deploy.delete_all()


def deploy(deployer: Deployer) -> tuple[str, Path]:
    model = deployer.model(STREAMING, {"weights.txt": b"w\n"})
    name = deployer.endpoint(model)
    described = deployer.wait(name)
    assert described["EndpointStatus"] == "InService", described.get("FailureReason")
    return name, deployer.tmp_path / model


@pytest.fixture
def short_deployer(tmp_path: Path) -> Iterator[Deployer]:
    """A server of its own whose invocations may last 3 s (OPENMAKER_INVOCATION_SECONDS)."""
    home = tmp_path / "home"
    home.mkdir()
    with running_api_server(home, OPENMAKER_INVOCATION_SECONDS="3") as server:
        deployer = Deployer(server, tmp_path)
        try:
            yield deployer
        finally:
            deployer.delete_all()


def test_parts_reach_the_client_as_the_container_sends_them(deployer: Deployer) -> None:
    name, image = deploy(deployer)
    answer = deployer.runtime.invoke_endpoint_with_response_stream(
        EndpointName=name, Body=b"gated", ContentType="text/plain"
    )
    assert answer["ContentType"] == "text/event-stream"
    assert answer["InvokedProductionVariant"] == "AllTraffic"
    events: Iterator[dict[str, Any]] = iter(answer["Body"])
    # The container holds its last part back until `go` exists: the first must already be here.
    assert next(events) == {"PayloadPart": {"Bytes": b"first "}}
    (image / "go").touch()
    rest = b"".join(event["PayloadPart"]["Bytes"] for event in events)
    assert rest == b"after the gate"

    # A refusal before any part is the ModelError InvokeEndpoint gives.
    with pytest.raises(ClientError) as refused:
        deployer.runtime.invoke_endpoint_with_response_stream(EndpointName=name, Body=b"fail")
    error: dict[str, Any] = dict(refused.value.response)
    assert error["Error"]["Code"] == "ModelError"
    assert error["OriginalStatusCode"] == 400 and error["OriginalMessage"] == "refused"

    # Both count in the endpoint's invocation metrics, as InvokeEndpoint's do.
    client = cloudwatch(deployer.server)
    wait_until(
        lambda: statistic(client, name, "Invocations", "Sum") == (2.0, "None"),
        "both streamed invocations counted",
    )
    assert statistic(client, name, "Invocation4XXErrors", "Sum") == (1.0, "None")
    assert statistic(client, name, "Invocation5XXErrors", "Sum") == (0.0, "None")
    model = statistic(client, name, "ModelLatency", "SampleCount")
    assert model == (2.0, "Microseconds")
    assert statistic(client, name, "OverheadLatency", "SampleCount") == (2.0, "Microseconds")


def test_a_stream_that_never_ends_is_cut_at_the_limit(short_deployer: Deployer) -> None:
    name, _ = deploy(short_deployer)
    answer = short_deployer.runtime.invoke_endpoint_with_response_stream(
        EndpointName=name, Body=b"forever"
    )
    parts = []
    with pytest.raises(EventStreamError) as cut:
        for event in answer["Body"]:
            parts.append(event["PayloadPart"]["Bytes"])
    assert parts[0] == b"first " and b"tick " in parts
    assert cut.value.response["Error"]["Code"] == "ModelStreamError"
    # (botocore keeps the event's Code and Message; its ErrorCode member is not surfaced.)
    assert "allotted time" in cut.value.response["Error"]["Message"]
    # A stream cut at the limit did not end as the model should: a 5xx in the metrics.
    client = cloudwatch(short_deployer.server)
    wait_until(
        lambda: statistic(client, name, "Invocation5XXErrors", "Sum") == (1.0, "None"),
        "the cut stream counted as a 5xx",
    )
    assert statistic(client, name, "Invocations", "Sum") == (1.0, "None")
