"""Serverless cold starts that fail, for real: a real `openmaker server`, boto3, a sandboxed
model server that exits at once. Each invocation waiting for a cold start is answered with the
reason when it fails, and the attempts are spaced by a growing delay."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from openmaker.serving import serverless
from tests.helpers import unique_name
from tests.test_endpoints import Deployer, deployer, pytestmark, wait_until
from tests.test_endpoints_serverless import SERVE, instances_of, one_attempt, serverless_config

__all__ = ["deployer", "pytestmark"]  # the fixture, and the skip without a sandbox

CRASH = """#!/bin/sh
echo "the model server cannot load its model" >&2
exit 3
"""
PING_FAILED = "did not pass the ping health check"
# SERVE, listening only once the test puts `go` in its image folder (/opt/program).
SLOW = SERVE.replace(
    "import http.server, time\n",
    "import http.server, os, time\n"
    "while not os.path.exists('/opt/program/go'):\n    time.sleep(0.05)\n",
    1,
)


def test_an_invocation_arriving_during_a_cold_start_gets_its_own(
    deployer: Deployer, tmp_path: Path
) -> None:
    model = deployer.model(SLOW, {"weights.txt": b"w\n"})
    name = unique_name("ep")
    deployer.endpoints.append(name)
    config = serverless_config(deployer, model, MaxConcurrency=2)
    deployer.sagemaker.create_endpoint(EndpointName=name, EndpointConfigName=config)
    assert deployer.wait(name)["EndpointStatus"] == "InService"
    runtime = one_attempt(deployer)
    answers: list[bytes] = []

    def send(body: bytes) -> None:
        answers.append(runtime.invoke_endpoint(EndpointName=name, Body=body)["Body"].read())

    first = threading.Thread(target=send, args=(b"one",))
    first.start()
    second = threading.Thread(target=send, args=(b"two",))
    try:
        wait_until(lambda: instances_of(name) == 1, "the first cold start")
        second.start()  # while the first instance does not answer /ping yet
        wait_until(lambda: instances_of(name) == 2, "a second cold start, the first still on")
    finally:
        (tmp_path / model / "go").touch()
        first.join()
        if second.ident is not None:
            second.join()
    assert sorted(answers) == [b"w one", b"w two"]


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
