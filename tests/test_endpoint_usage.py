"""Endpoint instances' utilization, for real: a real `openmaker server`, an endpoint whose
container burns CPU, measured through boto3's cloudwatch as SageMaker publishes it
(`/aws/sagemaker/Endpoints`, `EndpointName` + `VariantName`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from openmaker.runtime import unavailable_reason
from tests.test_endpoint_metrics import cloudwatch
from tests.test_endpoints import Deployer, deployer, wait_until

__all__ = ["deployer"]  # the fixture, used by name

pytestmark = pytest.mark.skipif(
    unavailable_reason() is not None, reason="endpoints need the bwrap sandbox"
)

NAMESPACE = "/aws/sagemaker/Endpoints"
# A model server with a child that keeps half a CPU busy (in the instance's cgroup, as any
# process of its container is).
BURNER = """#!/usr/bin/env python3
import http.server, os, time
if os.fork() == 0:
    while True:
        began = time.monotonic()
        while time.monotonic() - began < 0.05:
            pass
        time.sleep(0.05)
class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass
    def do_GET(self):
        self.send_response(200 if self.path == "/ping" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"""


def averages(client: Any, endpoint: str, metrics: list[str]) -> dict[str, list[float]]:
    """Each metric's Average per minute over the last few minutes, through GetMetricData."""
    now = datetime.now(UTC)
    dimensions = [
        {"Name": "EndpointName", "Value": endpoint},
        {"Name": "VariantName", "Value": "AllTraffic"},
    ]
    results = client.get_metric_data(
        MetricDataQueries=[
            {
                "Id": metric.lower(),
                "Label": metric,
                "MetricStat": {
                    "Metric": {
                        "Namespace": NAMESPACE,
                        "MetricName": metric,
                        "Dimensions": dimensions,
                    },
                    "Period": 60,
                    "Stat": "Average",
                    "Unit": "Percent",
                },
            }
            for metric in metrics
        ],
        StartTime=now - timedelta(minutes=5),
        EndTime=now + timedelta(minutes=1),
    )["MetricDataResults"]
    return {r["Label"]: r["Values"] for r in results}


def test_instance_utilization_is_published(deployer: Deployer) -> None:
    endpoint = deployer.endpoint(deployer.model(BURNER, {"weights.txt": b"w"}))
    assert deployer.wait(endpoint)["EndpointStatus"] == "InService"
    client = cloudwatch(deployer.server)
    wanted = ["CPUUtilization", "MemoryUtilization", "DiskUtilization"]

    def sampled() -> bool:
        return all(averages(client, endpoint, wanted).values())

    wait_until(sampled, "the instance's first utilization sample")  # every 5 s
    found = averages(client, endpoint, wanted)
    assert found["CPUUtilization"][0] > 5, found  # the burner's half CPU, less any contention
    assert found["MemoryUtilization"][0] > 0, found
    assert 0 < found["DiskUtilization"][0] <= 100, found

    listed = client.list_metrics(
        Namespace=NAMESPACE, Dimensions=[{"Name": "EndpointName", "Value": endpoint}]
    )["Metrics"]
    assert sorted(m["MetricName"] for m in listed) == sorted(wanted)  # no GPU given
    for metric in listed:
        assert metric["Namespace"] == NAMESPACE
        assert metric["Dimensions"] == [
            {"Name": "EndpointName", "Value": endpoint},
            {"Name": "VariantName", "Value": "AllTraffic"},
        ]
    # Not among the invocation metrics (no invocation was made).
    invocations = client.list_metrics(
        Namespace="AWS/SageMaker", Dimensions=[{"Name": "EndpointName", "Value": endpoint}]
    )["Metrics"]
    assert invocations == []
