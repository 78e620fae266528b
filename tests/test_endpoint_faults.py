"""Hostile model containers against a real `openmaker server`: one that never answers /ping,
one that dies while serving (one that floods its output: tests/test_endpoint_limits.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from sqlalchemy import select

from openmaker.jobs.db import EndpointConfigRecord, writer_sessions
from openmaker.settings import load_settings
from tests.helpers import unique_name
from tests.test_endpoints import SERVE, Deployer, deployer, pytestmark, wait_until

__all__ = ["deployer", "pytestmark"]  # the fixture, and the skip without a sandbox

# Takes the connection, never answers.
SILENT = """#!/usr/bin/env python3
import socket, time
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", 8080))
server.listen(64)
held = []
while True:
    held.append(server.accept()[0])
"""
# SERVE, but `die` in the body ends the process.
DIES = SERVE.replace(
    '        if body == b"fail":',
    '        if body == b"die":\n            os._exit(7)\n        if body == b"fail":',
)


def test_a_container_that_never_answers_ping_fails_the_endpoint(deployer: Deployer) -> None:
    model = deployer.model(SILENT, {"weights.txt": b"w\n"})
    name = unique_name("ep")
    deployer.sagemaker.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": model,
                "InstanceType": "ml.m5.large",
                "InitialInstanceCount": 1,
                "ContainerStartupHealthCheckTimeoutInSeconds": 60,
            }
        ],
    )
    # 60 s is the least the API takes; the stored configuration says 2 s, to keep this short.
    _startup_seconds(deployer.server.home, name, 2)
    deployer.endpoints.append(name)
    deployer.sagemaker.create_endpoint(EndpointName=name, EndpointConfigName=name)
    described = deployer.wait(name)
    assert described["EndpointStatus"] == "Failed"
    reason = described["FailureReason"]
    assert "did not pass the ping health check" in reason
    assert "did not answer GET /ping with 200 within 2 seconds" in reason


def _startup_seconds(home: Path, config: str, seconds: int) -> None:
    settings = load_settings({"OPENMAKER_HOME": str(home)})
    with writer_sessions(settings)() as session:
        row = session.scalars(
            select(EndpointConfigRecord).where(EndpointConfigRecord.name == config)
        ).one()
        request: dict[str, Any] = dict(row.request)
        variants = [dict(v) for v in request["ProductionVariants"]]
        variants[0]["ContainerStartupHealthCheckTimeoutInSeconds"] = seconds
        row.request = {**request, "ProductionVariants": variants}
        session.commit()


def test_a_container_that_dies_while_serving_is_started_again(deployer: Deployer) -> None:
    model = deployer.model(DIES, {"weights.txt": b"w\n"})
    name = deployer.endpoint(model)
    assert deployer.wait(name)["EndpointStatus"] == "InService"
    runtime = deployer.runtime
    assert runtime.invoke_endpoint(EndpointName=name, Body=b"a")["Body"].read() == b"w hello a"
    with pytest.raises(ClientError) as died:  # the container died under the request
        runtime.invoke_endpoint(EndpointName=name, Body=b"die")
    assert died.value.response["Error"]["Code"] == "ModelError"

    def answers() -> bool:
        try:
            return runtime.invoke_endpoint(EndpointName=name, Body=b"b")["Body"].read() == (
                b"w hello b"
            )
        except Exception:
            return False

    logs = deployer.server.client("logs")
    group = f"/aws/sagemaker/Endpoints/{name}"

    def noted() -> bool:
        # The stream is made with its first batch of lines, half a second after the death.
        streams = logs.describe_log_streams(logGroupName=group)["logStreams"]
        if not streams:
            return False
        (stream,) = streams
        events = logs.get_log_events(logGroupName=group, logStreamName=stream["logStreamName"])
        return any("exited with status 7" in e["message"] for e in events["events"])

    wait_until(noted, "the restart to be logged")
    wait_until(answers, "the endpoint to answer again")

    def counted() -> bool:
        # The proxy may reach the new container (same address) through a route read before
        # the worker, which looks every second, saw it answer /ping.
        described = deployer.sagemaker.describe_endpoint(EndpointName=name)
        assert described["EndpointStatus"] == "InService"
        return bool(described["ProductionVariants"][0]["CurrentInstanceCount"] == 1)

    wait_until(counted, "the instance counted again")
