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
from tests.test_endpoints import Deployer, deployer, pytestmark, wait_until
from tests.test_endpoints_serverless import (
    SERVE,
    instances_of,
    one_attempt,
    serverless_endpoint,
)

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
    name = serverless_endpoint(deployer, model, MaxConcurrency=2)
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


# SLOW, except that the instance that starts before the test puts `second` in the image folder
# says so and exits once the test puts `fail` there: its cold start fails, later ones do not.
FIRST_FAILS = SLOW.replace(
    "import http.server, os, time\n",
    "import http.server, os, sys, time\n"
    "if not os.path.exists('/opt/program/second'):\n"
    "    print('the first start', file=sys.stderr, flush=True)\n"
    "    while not os.path.exists('/opt/program/fail'):\n        time.sleep(0.05)\n"
    "    sys.exit(3)\n"
    "print('a later start', file=sys.stderr, flush=True)\n",
    1,
)


def test_a_failing_cold_start_answers_only_the_invocation_waiting_longest(
    deployer: Deployer, tmp_path: Path
) -> None:
    model = deployer.model(FIRST_FAILS, {"weights.txt": b"w\n"})
    folder = tmp_path / model
    name = serverless_endpoint(deployer, model, MaxConcurrency=2)
    runtime = one_attempt(deployer)
    logs, group = deployer.server.client("logs"), f"/aws/sagemaker/Endpoints/{name}"
    answers: dict[bytes, bytes | str] = {}

    def send(body: bytes) -> None:
        try:
            answers[body] = runtime.invoke_endpoint(EndpointName=name, Body=body)["Body"].read()
        except ClientError as exc:
            answers[body] = exc.response["Error"]["Code"]

    first = threading.Thread(target=send, args=(b"one",))
    second = threading.Thread(target=send, args=(b"two",))
    first.start()
    try:
        wait_until(lambda: _said(logs, group, "the first start"), "the first cold start")
        (folder / "second").touch()
        second.start()
        wait_until(lambda: _said(logs, group, "a later start"), "a second cold start")
        (folder / "fail").touch()  # the first start fails; the second still waits for `go`
        first.join()
        assert answers[b"one"] == "ModelNotReadyException"
        assert second.is_alive()  # the old code answered it with the first start's failure
    finally:
        (folder / "go").touch()
        first.join()
        if second.ident is not None:
            second.join()
    assert answers[b"two"] == b"w two"


def _said(logs: Any, group: str, text: str) -> bool:
    """Whether a line of the endpoint's log group holds `text`."""
    try:
        found = logs.filter_log_events(logGroupName=group, filterPattern=f'"{text}"')
    except ClientError:  # the group is made with the first instance's first lines
        return False
    return any(text in e["message"] for e in found["events"])


def test_a_failing_cold_start_answers_who_waits_and_backs_off(deployer: Deployer) -> None:
    model = deployer.model(CRASH, {"weights.txt": b"w\n"})
    name = serverless_endpoint(deployer, model)
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
