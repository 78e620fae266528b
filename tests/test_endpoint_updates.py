"""UpdateEndpoint and UpdateEndpointWeightsAndCapacities for real: a real `openmaker server`,
boto3, model servers in sandboxed containers. An update moves the traffic only once the new
fleet answers /ping, drops no request while it does, and a new fleet that fails leaves the old
one serving with the reason."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.helpers import unique_name
from tests.test_endpoints import EXITS, SERVE, Deployer, deployer, pytestmark, wait_until

__all__ = ["deployer", "pytestmark"]  # the fixture, and the skip without a sandbox


class Stream:
    """Invocations one after another, until stopped: every answer and every error kept."""

    def __init__(self, deployer: Deployer, name: str) -> None:
        self.deployer, self.name = deployer, name
        self.answers: list[bytes] = []
        self.errors: list[str] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self.done.is_set():
            try:
                answer = self.deployer.runtime.invoke_endpoint(EndpointName=self.name, Body=b"x")
                self.answers.append(answer["Body"].read())
            except ClientError as error:
                self.errors.append(str(error))


@contextlib.contextmanager
def streaming(deployer: Deployer, name: str) -> Iterator[Stream]:
    stream = Stream(deployer, name)
    stream.thread.start()
    try:
        yield stream
    finally:
        stream.done.set()
        stream.thread.join()


def config(deployer: Deployer, variants: list[dict[str, Any]]) -> str:
    name = unique_name("cfg")
    deployer.sagemaker.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[
            {"InstanceType": "ml.m5.large", "InitialInstanceCount": 1, **v} for v in variants
        ],
    )
    return name


def test_an_update_moves_traffic_without_losing_a_request(deployer: Deployer) -> None:
    sagemaker = deployer.sagemaker
    old = deployer.model(SERVE, {"weights.txt": b"v1\n"})
    name = deployer.endpoint(old)
    assert deployer.wait(name)["EndpointStatus"] == "InService"
    new_config = config(
        deployer,
        [
            {
                "VariantName": "AllTraffic",
                "ModelName": deployer.model(SERVE, {"weights.txt": b"v2\n"}),
            }
        ],
    )
    with streaming(deployer, name) as stream:
        wait_until(lambda: b"v1 hello x" in stream.answers, "answers from the old fleet")
        sagemaker.update_endpoint(EndpointName=name, EndpointConfigName=new_config)
        # One update at a time, as on SageMaker.
        with pytest.raises(ClientError) as busy:
            sagemaker.update_endpoint(EndpointName=name, EndpointConfigName=new_config)
        assert "Cannot update in-progress endpoint" in busy.value.response["Error"]["Message"]
        described = deployer.wait(name, ("InService",))
        seen = len(stream.answers)
        wait_until(lambda: len(stream.answers) > seen + 5, "answers after the update")
    assert stream.errors == []
    assert described["EndpointConfigName"] == new_config
    assert "FailureReason" not in described and "PendingDeploymentSummary" not in described
    # The old fleet answered until the new one took over, and never after it was retired.
    first_new = stream.answers.index(b"v2 hello x")
    assert set(stream.answers[:first_new]) == {b"v1 hello x"}
    assert set(stream.answers[seen:]) == {b"v2 hello x"}

    # A new configuration whose container never comes up: the old fleet goes on serving.
    broken = config(
        deployer,
        [{"VariantName": "AllTraffic", "ModelName": deployer.model(EXITS, {"weights.txt": b"w"})}],
    )
    sagemaker.update_endpoint(EndpointName=name, EndpointConfigName=broken)
    pending = sagemaker.describe_endpoint(EndpointName=name)
    if pending["EndpointStatus"] == "Updating":  # unless the worker was quicker than this look
        assert pending["PendingDeploymentSummary"]["EndpointConfigName"] == broken
    wait_until(
        lambda: "FailureReason" in sagemaker.describe_endpoint(EndpointName=name),
        "the update to fail",
    )
    described = sagemaker.describe_endpoint(EndpointName=name)
    assert described["EndpointStatus"] == "InService"
    assert described["EndpointConfigName"] == new_config
    reason = described["FailureReason"]
    assert reason.startswith("UpdateEndpoint failed, the endpoint serves as before")
    assert "exited with status 3" in reason
    answer = deployer.runtime.invoke_endpoint(EndpointName=name, Body=b"x")
    assert answer["Body"].read() == b"v2 hello x"


def test_weights_and_capacities_change_live(deployer: Deployer) -> None:
    sagemaker = deployer.sagemaker
    one = deployer.model(SERVE, {"weights.txt": b"a\n"})
    two = deployer.model(SERVE, {"weights.txt": b"b\n"})
    name = unique_name("ep")
    made = config(
        deployer,
        [
            {"VariantName": "A", "ModelName": one, "InitialVariantWeight": 1.0},
            {"VariantName": "B", "ModelName": two, "InitialVariantWeight": 0.0},
        ],
    )
    deployer.endpoints.append(name)
    sagemaker.create_endpoint(EndpointName=name, EndpointConfigName=made)
    assert deployer.wait(name)["EndpointStatus"] == "InService"
    answers = {
        deployer.runtime.invoke_endpoint(EndpointName=name, Body=b"x")["Body"].read()
        for _ in range(8)
    }
    assert answers == {b"a hello x"}

    sagemaker.update_endpoint_weights_and_capacities(
        EndpointName=name,
        DesiredWeightsAndCapacities=[
            {"VariantName": "A", "DesiredWeight": 0.0},
            {"VariantName": "B", "DesiredWeight": 1.0, "DesiredInstanceCount": 2},
        ],
    )
    described = sagemaker.describe_endpoint(EndpointName=name)
    if described["EndpointStatus"] == "Updating":  # current and desired told apart meanwhile
        b = next(v for v in described["ProductionVariants"] if v["VariantName"] == "B")
        assert (b["CurrentWeight"], b["DesiredWeight"]) == (0.0, 1.0)
        assert (b["CurrentInstanceCount"], b["DesiredInstanceCount"]) == (1, 2)
    described = deployer.wait(name, ("InService",))
    variants = {v["VariantName"]: v for v in described["ProductionVariants"]}
    assert variants["B"]["CurrentInstanceCount"] == variants["B"]["DesiredInstanceCount"] == 2
    assert variants["B"]["CurrentWeight"] == 1.0 and variants["A"]["CurrentWeight"] == 0.0
    answers = {
        deployer.runtime.invoke_endpoint(EndpointName=name, Body=b"x")["Body"].read()
        for _ in range(8)
    }
    assert answers == {b"b hello x"}
    logs = deployer.server.client("logs")
    group = f"/aws/sagemaker/Endpoints/{name}"

    def variants_of_streams() -> list[str]:
        found = logs.describe_log_streams(logGroupName=group)["logStreams"]
        return sorted(s["logStreamName"].split("/")[0] for s in found)

    # A stream is made with its instance's first batch of lines, which may follow its answers.
    wait_until(lambda: len(variants_of_streams()) >= 3, "the new instance's log stream")
    assert variants_of_streams() == ["A", "B", "B"]

    # Fewer instances: the one retired leaves the route first.
    sagemaker.update_endpoint_weights_and_capacities(
        EndpointName=name,
        DesiredWeightsAndCapacities=[{"VariantName": "B", "DesiredInstanceCount": 1}],
    )
    described = deployer.wait(name, ("InService",))
    variants = {v["VariantName"]: v for v in described["ProductionVariants"]}
    assert variants["B"]["CurrentInstanceCount"] == variants["B"]["DesiredInstanceCount"] == 1

    with pytest.raises(ClientError) as unknown:
        sagemaker.update_endpoint_weights_and_capacities(
            EndpointName=name,
            DesiredWeightsAndCapacities=[{"VariantName": "C", "DesiredWeight": 1.0}],
        )
    assert "DesiredWeightsAndCapacities.1.VariantName" in unknown.value.response["Error"]["Message"]
