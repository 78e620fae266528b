"""UpdateEndpoint's DeploymentConfig for real: a canary update and a rolling one under a steady
stream of invocations (both fleets answer meanwhile, none is lost, then only the new one), and
what openmaker cannot honour refused as a ValidationException naming the member."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.test_endpoint_updates import config, streaming
from tests.test_endpoints import SERVE, Deployer, deployer, pytestmark, wait_until

__all__ = ["deployer", "pytestmark"]  # the fixture, and the skip without a sandbox


def canary(size: int, wait: int = 2) -> dict[str, Any]:
    return {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": {
                "Type": "CANARY",
                "CanarySize": {"Type": "INSTANCE_COUNT", "Value": size},
                "WaitIntervalInSeconds": wait,
            },
            "TerminationWaitInSeconds": 1,
            "MaximumExecutionTimeoutInSeconds": 600,
        }
    }


def refused(deployer: Deployer, name: str, new_config: str, deployment: dict[str, Any]) -> str:
    with pytest.raises(ClientError) as error:
        deployer.sagemaker.update_endpoint(
            EndpointName=name, EndpointConfigName=new_config, DeploymentConfig=deployment
        )
    assert error.value.response["Error"]["Code"] == "ValidationException"
    return str(error.value.response["Error"]["Message"])


def test_a_canary_update_serves_from_both_fleets_then_the_new(deployer: Deployer) -> None:
    old = deployer.model(SERVE, {"weights.txt": b"v1\n"})
    name = deployer.endpoint(old)
    assert deployer.wait(name)["EndpointStatus"] == "InService"
    new_model = deployer.model(SERVE, {"weights.txt": b"v2\n"})
    new_config = config(
        deployer, [{"VariantName": "AllTraffic", "ModelName": new_model, "InitialInstanceCount": 2}]
    )

    # What cannot be honoured, refused before anything starts.
    assert "CanarySize" in refused(deployer, name, new_config, canary(2))  # over half
    alarms = {**canary(1), "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "errors"}]}}
    assert "AutoRollbackConfiguration.Alarms" in refused(deployer, name, new_config, alarms)
    renamed = config(deployer, [{"VariantName": "Other", "ModelName": new_model}])
    assert "variant names" in refused(deployer, name, renamed, canary(1))
    assert deployer.sagemaker.describe_endpoint(EndpointName=name)["EndpointStatus"] == "InService"

    with streaming(deployer, name) as stream:
        wait_until(lambda: b"v1 hello x" in stream.answers, "answers from the old fleet")
        deployer.sagemaker.update_endpoint(
            # A canary phase of several route refreshes (the proxy's route lives 1 s), so that
            # a loaded machine's slow stream still sees both fleets in it.
            EndpointName=name,
            EndpointConfigName=new_config,
            DeploymentConfig=canary(1, wait=5),
        )
        described = deployer.wait(name, ("InService",))
        seen = len(stream.answers)
        wait_until(lambda: len(stream.answers) > seen + 5, "answers after the update")
    assert stream.errors == []
    assert described["EndpointConfigName"] == new_config
    assert "FailureReason" not in described
    first_new = stream.answers.index(b"v2 hello x")
    # The canary: after the new fleet's first answer, the old one still answered some.
    assert b"v1 hello x" in stream.answers[first_new:seen]
    assert set(stream.answers[seen:]) == {b"v2 hello x"}
    (variant,) = described["ProductionVariants"]
    assert variant["CurrentInstanceCount"] == 2


def test_a_rolling_update_replaces_the_instances_batch_by_batch(deployer: Deployer) -> None:
    name = deployer.endpoint(deployer.model(SERVE, {"weights.txt": b"v1\n"}), count=2)
    assert deployer.wait(name)["EndpointStatus"] == "InService"
    new_model = deployer.model(SERVE, {"weights.txt": b"v2\n"})
    new_config = config(
        deployer, [{"VariantName": "AllTraffic", "ModelName": new_model, "InitialInstanceCount": 2}]
    )

    def rolling(batch: int) -> dict[str, Any]:
        return {
            "RollingUpdatePolicy": {
                "MaximumBatchSize": {"Type": "INSTANCE_COUNT", "Value": batch},
                "WaitIntervalInSeconds": 1,
            }
        }

    assert "MaximumBatchSize" in refused(deployer, name, new_config, rolling(2))  # over half
    with streaming(deployer, name) as stream:
        wait_until(lambda: b"v1 hello x" in stream.answers, "answers from the old fleet")
        deployer.sagemaker.update_endpoint(
            EndpointName=name, EndpointConfigName=new_config, DeploymentConfig=rolling(1)
        )
        described = deployer.wait(name, ("InService",))
        seen = len(stream.answers)
        wait_until(lambda: len(stream.answers) > seen + 5, "answers after the update")
    assert stream.errors == []
    assert "FailureReason" not in described
    first_new = stream.answers.index(b"v2 hello x")
    # One old instance went on answering beside the first new one.
    assert b"v1 hello x" in stream.answers[first_new:seen]
    assert set(stream.answers[seen:]) == {b"v2 hello x"}
    assert described["ProductionVariants"][0]["CurrentInstanceCount"] == 2


# SERVE, once the test has given this instance its verdict: /opt/program/<its host name>.ok
# (the image folder) lets it serve, .fail ends it with status 3.
VERDICT = """#!/usr/bin/env python3
import os, socket, sys, time
me = socket.gethostname()
print("waiting for a verdict", flush=True)
while not os.path.exists(f"/opt/program/{me}.ok"):
    if os.path.exists(f"/opt/program/{me}.fail"):
        print("told to fail", flush=True)
        sys.exit(3)
    time.sleep(0.05)
""" + SERVE.split("\n", 1)[1]


class Verdicts:
    """The instances of an endpoint whose models run VERDICT, told one by one what to do."""

    def __init__(self, deployer: Deployer, name: str, images: list[Path]) -> None:
        self.logs = deployer.server.client("logs")
        self.group = f"/aws/sagemaker/Endpoints/{name}"
        self.images, self.seen = images, list[str]()

    def streams(self) -> list[str]:
        try:
            found = self.logs.describe_log_streams(logGroupName=self.group)["logStreams"]
        except ClientError:
            return []
        return [s["logStreamName"] for s in found]

    def started(self, count: int = 1) -> list[str]:
        """The next `count` instances to start (their log streams' names), waiting for their
        verdicts; no other has started."""
        fresh: list[str] = []

        def appeared() -> bool:
            fresh[:] = [s for s in self.streams() if s not in self.seen]
            return len(fresh) >= count

        wait_until(appeared, f"{count} more instances to start")
        assert len(fresh) == count, fresh
        self.seen += fresh
        return fresh

    def next_instance(self) -> str:
        (stream,) = self.started()
        return stream

    def give(self, stream: str, verdict: str) -> None:
        for image in self.images:
            (image / f"{stream.split('/')[-1]}.{verdict}").touch()

    def said(self, stream: str) -> str:
        events = self.logs.get_log_events(logGroupName=self.group, logStreamName=stream)
        return "\n".join(e["message"] for e in events["events"])


def test_a_rolling_update_rolls_back_in_batches(deployer: Deployer) -> None:
    """A rolling update of 3 instances, 1 at a time, whose third batch fails: the 2 old
    instances retired start again one at a time (RollbackMaximumBatchSize 1), each taking the
    place of one new instance, which served until then."""
    old_model = deployer.model(VERDICT, {"weights.txt": b"v1\n"})
    new_model = deployer.model(VERDICT, {"weights.txt": b"v2\n"})
    name = deployer.endpoint(old_model, count=3)
    instances = Verdicts(deployer, name, [deployer.tmp_path / m for m in (old_model, new_model)])
    for stream in instances.started(3):
        instances.give(stream, "ok")
    assert deployer.wait(name)["EndpointStatus"] == "InService"
    new_config = config(
        deployer, [{"VariantName": "AllTraffic", "ModelName": new_model, "InitialInstanceCount": 3}]
    )
    deployer.sagemaker.update_endpoint(
        EndpointName=name,
        EndpointConfigName=new_config,
        DeploymentConfig={
            "RollingUpdatePolicy": {
                "MaximumBatchSize": {"Type": "INSTANCE_COUNT", "Value": 1},
                "WaitIntervalInSeconds": 1,
                "RollbackMaximumBatchSize": {"Type": "INSTANCE_COUNT", "Value": 1},
            }
        },
    )
    new_a = instances.next_instance()
    instances.give(new_a, "ok")
    new_b = instances.next_instance()
    instances.give(new_b, "ok")
    instances.give(instances.next_instance(), "fail")  # the third batch fails
    # The rollback's first batch: while it starts, both new instances still serve.
    again = instances.next_instance()
    assert "got SIGTERM" not in instances.said(new_a)
    assert "got SIGTERM" not in instances.said(new_b)
    instances.give(again, "ok")
    # Healthy, it takes the first new instance's place; then the second batch starts.
    wait_until(lambda: "got SIGTERM" in instances.said(new_a), "the first new instance to go")
    again = instances.next_instance()
    assert "got SIGTERM" not in instances.said(new_b)
    instances.give(again, "ok")
    wait_until(lambda: "got SIGTERM" in instances.said(new_b), "the second new instance to go")
    described = deployer.wait(name, ("InService",))
    reason = described["FailureReason"]
    assert reason.startswith("UpdateEndpoint failed, the endpoint serves as before")
    assert 'exited with status 3 before it answered /ping; its last output: "told to fail"' in (
        reason
    )
    assert described["EndpointConfigName"] == name
    answers = {
        deployer.runtime.invoke_endpoint(EndpointName=name, Body=b"x")["Body"].read()
        for _ in range(6)
    }
    assert answers == {b"v1 hello x"}
