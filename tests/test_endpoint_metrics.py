"""Invocation metrics and kept-alive connections, for real: a real `openmaker server`, an
endpoint whose model server speaks HTTP/1.1, invoked through boto3's sagemaker-runtime and
measured through boto3's cloudwatch, as SageMaker publishes them (`AWS/SageMaker`,
`EndpointName` + `VariantName`)."""

from __future__ import annotations

import itertools
import os
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import boto3
import pytest
from botocore.exceptions import ClientError

from openmaker.runtime import unavailable_reason
from tests.apiserver import ApiServer
from tests.test_endpoints import Deployer, deployer, wait_until

__all__ = ["deployer"]  # the fixture, used by name

pytestmark = pytest.mark.skipif(
    unavailable_reason() is not None, reason="endpoints need the bwrap sandbox"
)

# A model server that keeps connections alive (HTTP/1.1) and answers with the client's port,
# so a reused connection shows; `fail` in the body is a 400, `crash` a 500.
KEEP_ALIVE = """#!/usr/bin/env python3
import http.server
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
        status = {b"fail": 400, b"crash": 500}.get(body, 200)
        answer = str(self.client_address[1]).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"""


def cloudwatch(server: ApiServer) -> Any:
    """A client configured only by what `openmaker env` prints."""
    with mock.patch.dict(os.environ, server.env):
        return boto3.session.Session().client("cloudwatch")


def statistic(
    client: Any, endpoint: str, metric: str, name: str, variant: str | None = "AllTraffic"
) -> tuple[float, str] | None:
    """The metric's statistic over the last hour, in one period, and its unit (variant None:
    the endpoint's own series, dimension EndpointName only)."""
    now = datetime.now(UTC)
    dimensions = [{"Name": "EndpointName", "Value": endpoint}]
    if variant is not None:
        dimensions.append({"Name": "VariantName", "Value": variant})
    answer = client.get_metric_statistics(
        Namespace="AWS/SageMaker",
        MetricName=metric,
        Dimensions=dimensions,
        StartTime=now - timedelta(minutes=30),
        EndTime=now + timedelta(minutes=30),
        Period=3600,
        Statistics=[name],
    )
    points = answer["Datapoints"]
    return (sum(p[name] for p in points), points[0]["Unit"]) if points else None


def invoke(deployer: Deployer, endpoint: str, body: bytes) -> str:
    answer = deployer.runtime.invoke_endpoint(EndpointName=endpoint, Body=body)
    return str(answer["Body"].read().decode())


def test_invocations_are_counted_timed_and_listed(deployer: Deployer) -> None:
    endpoint = deployer.endpoint(deployer.model(KEEP_ALIVE, {"weights.txt": b"w"}))
    assert deployer.wait(endpoint)["EndpointStatus"] == "InService"
    for _ in range(3):
        invoke(deployer, endpoint, b"x")
    for body, status in ((b"fail", 400), (b"crash", 500)):
        with pytest.raises(ClientError) as raised:
            invoke(deployer, endpoint, body)
        error: dict[str, Any] = dict(raised.value.response)
        assert error["OriginalStatusCode"] == status
    client = cloudwatch(deployer.server)

    def counted() -> bool:
        return statistic(client, endpoint, "Invocations", "Sum") == (5.0, "None")

    wait_until(counted, "the invocations counted")  # written about every second
    assert statistic(client, endpoint, "InvocationsPerInstance", "Sum") == (5.0, "None")
    assert statistic(client, endpoint, "Invocation4XXErrors", "Sum") == (1.0, "None")
    assert statistic(client, endpoint, "Invocation5XXErrors", "Sum") == (1.0, "None")
    assert statistic(client, endpoint, "Invocation5XXErrors", "SampleCount") == (5.0, "None")
    for latency in ("ModelLatency", "OverheadLatency"):
        count = statistic(client, endpoint, latency, "SampleCount")
        assert count == (5.0, "Microseconds"), latency
        average = statistic(client, endpoint, latency, "Average")
        assert average is not None and average[0] > 0, latency
    listed = client.list_metrics(
        Namespace="AWS/SageMaker", Dimensions=[{"Name": "EndpointName", "Value": endpoint}]
    )["Metrics"]
    assert sorted(m["MetricName"] for m in listed) == sorted(
        [
            "Invocations",
            "InvocationsPerInstance",
            "Invocation4XXErrors",
            "Invocation5XXErrors",
            "ModelLatency",
            "OverheadLatency",
        ]
    )
    assert listed[0]["Dimensions"] == [
        {"Name": "EndpointName", "Value": endpoint},
        {"Name": "VariantName", "Value": "AllTraffic"},
    ]
    now = datetime.now(UTC)
    data = client.get_metric_data(
        MetricDataQueries=[
            {
                "Id": "calls",
                "MetricStat": {
                    "Metric": {
                        "Namespace": "AWS/SageMaker",
                        "MetricName": "Invocations",
                        "Dimensions": listed[0]["Dimensions"],
                    },
                    "Period": 60,
                    "Stat": "Sum",
                },
            }
        ],
        StartTime=now - timedelta(minutes=10),
        EndTime=now + timedelta(minutes=1),
    )["MetricDataResults"][0]
    assert sum(data["Values"]) == 5.0


def test_invocations_reuse_a_kept_connection(deployer: Deployer) -> None:
    endpoint = deployer.endpoint(deployer.model(KEEP_ALIVE, {"weights.txt": b"w"}))
    assert deployer.wait(endpoint)["EndpointStatus"] == "InService"
    # One after the other: each finds the connection the one before gave back, but at the one
    # switch from the Python path's connections to the native lane's (api/lane.py) once the
    # lane takes the client's connection.
    ports = [invoke(deployer, endpoint, b"x") for _ in range(8)]
    assert sum(a != b for a, b in itertools.pairwise(ports)) <= 1, ports
