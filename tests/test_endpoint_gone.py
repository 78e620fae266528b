"""Invocations held by an instance that goes away end at once, with the error SageMaker gives,
never at the invocation time limit: a container killed with its network may never close its
connections (the proxy would wait for an answer that cannot come)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from openmaker.runtime import netlink
from tests.apiserver import ApiServer, running_api_server
from tests.test_endpoints import SERVE, Deployer, bridges_of, pytestmark, wait_until

__all__ = ["pytestmark"]  # the skip without a sandbox

# SERVE, but `hold` in the body is never answered.
HOLDS = SERVE.replace(
    '        if body == b"fail":',
    '        if body == b"hold":\n            print("holding", flush=True)\n'
    "            time.sleep(3600)\n"
    '        if body == b"slow":\n            time.sleep(8)\n        if body == b"fail":',
).replace("import http.server, os", "import http.server, os, time")
# Far longer than any wait below: an invocation ending goes by the instance going, not by this.
LIMIT_SECONDS = 600


@pytest.fixture
def patient(tmp_path: Path) -> Iterator[Deployer]:
    with running_api_server(
        tmp_path / "home", OPENMAKER_INVOCATION_SECONDS=str(LIMIT_SECONDS)
    ) as server:
        deploy = Deployer(server, tmp_path)
        deploy.runtime = _runtime(server)
        try:
            yield deploy
        finally:
            deploy.delete_all()


def _runtime(server: ApiServer) -> Any:
    return boto3.client(
        "sagemaker-runtime",
        region_name=server.env["AWS_REGION"],
        aws_access_key_id=server.env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=server.env["AWS_SECRET_ACCESS_KEY"],
        endpoint_url=server.env["AWS_ENDPOINT_URL_SAGEMAKER"],
        config=Config(read_timeout=LIMIT_SECONDS + 60, retries={"max_attempts": 1}),
    )


class Held:
    """An invocation sent in a thread; its error once it ends."""

    def __init__(self, runtime: Any, name: str) -> None:
        self.error: Exception | None = None
        self.ended = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(runtime, name), daemon=True)
        self.thread.start()

    def _run(self, runtime: Any, name: str) -> None:
        try:
            runtime.invoke_endpoint(EndpointName=name, Body=b"hold")
        except Exception as exc:  # what the test reads
            self.error = exc
        finally:
            self.ended.set()


def _holding(deployer: Deployer, name: str) -> bool:
    logs = deployer.server.client("logs")
    group = f"/aws/sagemaker/Endpoints/{name}"
    try:
        streams = logs.describe_log_streams(logGroupName=group)["logStreams"]
    except ClientError:
        return False
    for stream in streams:
        events = logs.get_log_events(logGroupName=group, logStreamName=stream["logStreamName"])
        if any("holding" in e["message"] for e in events["events"]):
            return True
    return False


def test_an_invocation_held_by_an_instance_whose_network_went_ends(patient: Deployer) -> None:
    """The instance's network goes as when its container is killed with it (the kernel then
    closes the container's connections where no packet reaches the proxy): the invocation
    it held ends with the ModelError of a container that died, not at the time limit."""
    model = patient.model(HOLDS, {"weights.txt": b"w\n"})
    name = patient.endpoint(model)
    assert patient.wait(name)["EndpointStatus"] == "InService"
    slow = patient.runtime.invoke_endpoint(EndpointName=name, Body=b"slow")
    # Quiet for longer than the watch on the connection takes to give up on a gone peer.
    assert slow["Body"].read() == b"w hello slow"
    held = Held(patient.runtime, name)
    wait_until(lambda: _holding(patient, name), "the container to hold the invocation")
    # The host's ends of the instances' links, on the endpoint's bridge.
    veths = [
        port.name for b in bridges_of(name) for port in Path(f"/sys/class/net/{b}/brif").iterdir()
    ]
    assert veths, bridges_of(name)
    netlink.delete_links(veths)
    wait_until(held.ended.is_set, "the held invocation to end", timeout=60)
    assert isinstance(held.error, ClientError), held.error
    error: Any = held.error.response
    assert error["Error"]["Code"] == "ModelError", error
    assert error["OriginalStatusCode"] == 500
    assert "did not answer" in error["OriginalMessage"]
