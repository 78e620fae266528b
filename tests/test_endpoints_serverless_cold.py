"""Serverless cold starts that fail, for real: a real `openmaker server`, boto3, a sandboxed
model server that exits at once. Each invocation waiting for a cold start is answered with the
reason when it fails, and the attempts are spaced by a growing delay."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from botocore.exceptions import ClientError

from openmaker.serving import serverless
from tests.helpers import unique_name
from tests.test_endpoints import Deployer, deployer, pytestmark, wait_until
from tests.test_endpoints_serverless import one_attempt, serverless_config

__all__ = ["deployer", "pytestmark"]  # the fixture, and the skip without a sandbox

CRASH = """#!/bin/sh
echo "the model server cannot load its model" >&2
exit 3
"""
PING_FAILED = "did not pass the ping health check"


def test_a_failing_cold_start_answers_who_waits_and_backs_off(deployer: Deployer) -> None:
    model = deployer.model(CRASH, {"weights.txt": b"w\n"})
    name = unique_name("ep")
    deployer.endpoints.append(name)
    config = serverless_config(deployer, model)
    deployer.sagemaker.create_endpoint(EndpointName=name, EndpointConfigName=config)
    assert deployer.wait(name)["EndpointStatus"] == "InService"
    runtime = one_attempt(deployer)
    for _ in range(3):  # each waits for a cold start of its own (after the delay), which fails
        with pytest.raises(ClientError) as error:
            runtime.invoke_endpoint(EndpointName=name, Body=b"x")
        assert error.value.response["Error"]["Code"] == "ModelNotReadyException"
        assert PING_FAILED in error.value.response["Error"]["Message"]
    logs, group = deployer.server.client("logs"), f"/aws/sagemaker/Endpoints/{name}"
    # The log lines are written about every second.
    wait_until(lambda: len(_attempts(logs, group)) >= 3, "each cold start's log stream")
    attempts = _attempts(logs, group)
    assert len(attempts) == 3, attempts
    # Each attempt began at least the backoff delay after the one before failed.
    for failures, (before, after) in enumerate(itertools.pairwise(attempts), 1):
        waited = (after[0] - before[1]) / 1000
        assert waited >= serverless.retry_delay(failures), (failures, attempts)
    assert serverless.retry_delay(2) > serverless.retry_delay(1)


def _attempts(logs: Any, group: str) -> list[tuple[int, int]]:
    """Each cold start's instance: when its stream's first event was, and when its failure was
    noted (ms since the epoch), in order."""
    found = []
    for stream in logs.describe_log_streams(logGroupName=group)["logStreams"]:
        events = logs.get_log_events(
            logGroupName=group, logStreamName=stream["logStreamName"], startFromHead=True
        )["events"]
        failed = [e["timestamp"] for e in events if PING_FAILED in e["message"]]
        if failed:
            found.append((min(e["timestamp"] for e in events), failed[0]))
    return sorted(found)
