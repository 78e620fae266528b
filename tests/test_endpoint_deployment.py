"""UpdateEndpoint's DeploymentConfig for real: a canary update and a rolling one under a steady
stream of invocations (both fleets answer meanwhile, none is lost, then only the new one), and
what openmaker cannot honour refused as a ValidationException naming the member."""

from __future__ import annotations

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
            EndpointName=name, EndpointConfigName=new_config, DeploymentConfig=canary(1, wait=5)
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
