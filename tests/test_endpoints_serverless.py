"""Serverless variants for real: a real `openmaker server` with a short idle period
(OPENMAKER_SERVERLESS_IDLE_SECONDS), boto3, a sandboxed model server. The endpoint has no
instance until it is invoked, answers (a cold start, measured as ModelSetupTime), refuses what
goes over MaxConcurrency, and goes back to no instance once idle."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from openmaker.runtime.limits import cgroup_path
from openmaker.serving.limits import instance_cgroup
from tests.apiserver import running_api_server
from tests.helpers import kill_every_worker, unique_name
from tests.test_endpoint_limits import LIMITED
from tests.test_endpoint_metrics import cloudwatch, statistic
from tests.test_endpoints import Deployer, bridges_of, deployer, pytestmark, wait_until

__all__ = ["deployer", "pytestmark"]  # the fixture, and the skip without a sandbox

# Answers with its model file and the body; `hold` is answered two seconds later (`holdN`: N
# seconds), so that an invocation is under way meanwhile.
SERVE = """#!/usr/bin/env python3
import http.server, time
MODEL = open("/opt/ml/model/weights.txt").read().strip()
class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass
    def do_GET(self):
        self.send_response(200 if self.path == "/ping" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if body.startswith(b"hold"):
            time.sleep(float(body[4:] or 2))
        answer = f"{MODEL} {body.decode()}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"""


@pytest.fixture
def idle_deployer(tmp_path: Path) -> Iterator[Deployer]:
    yield from _deployer(tmp_path, OPENMAKER_SERVERLESS_IDLE_SECONDS="1")


@pytest.fixture
def small_deployer(tmp_path: Path) -> Iterator[Deployer]:
    """A machine with room for one serverless instance (placed as an ml.t3.medium: 2 vCPUs)."""
    yield from _deployer(
        tmp_path, OPENMAKER_CAPACITY="strict", OPENMAKER_CPUS="2", OPENMAKER_MEMORY_GIB="8"
    )


def _deployer(tmp_path: Path, **env: str) -> Iterator[Deployer]:
    home = tmp_path / "home"
    with running_api_server(home, **env) as server:
        deploy = Deployer(server, tmp_path)
        try:
            yield deploy
        finally:
            deploy.delete_all()
            kill_every_worker(home)


def serverless_config(deployer: Deployer, model: str, **config: Any) -> str:
    name = unique_name("cfg")
    deployer.sagemaker.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": model,
                "ServerlessConfig": {"MemorySizeInMB": 1024, "MaxConcurrency": 1, **config},
            }
        ],
    )
    return name


def serverless_endpoint(deployer: Deployer, model: str, **config: Any) -> str:
    """An endpoint of one serverless variant of `model` (`config`: its ServerlessConfig's),
    InService; deleted with the deployer's."""
    name = unique_name("ep")
    deployer.endpoints.append(name)
    made = serverless_config(deployer, model, **config)
    deployer.sagemaker.create_endpoint(EndpointName=name, EndpointConfigName=made)
    assert deployer.wait(name)["EndpointStatus"] == "InService"
    return name


def one_attempt(deployer: Deployer) -> Any:
    """A runtime client making one attempt per call: botocore would retry a throttled call."""
    env = deployer.server.env
    return boto3.client(
        "sagemaker-runtime",
        region_name=env["AWS_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        endpoint_url=env["AWS_ENDPOINT_URL_SAGEMAKER"],
        config=Config(retries={"total_max_attempts": 1}),
    )


def instances_of(endpoint: str) -> int:
    """Its instances: each has a veth on the endpoint's bridge."""
    bridges = bridges_of(endpoint)
    return sum(len(list(Path("/sys/class/net").glob(f"{b}v*"))) for b in bridges)


def test_a_serverless_config_is_checked_as_sagemaker_checks_it(deployer: Deployer) -> None:
    model = deployer.model(SERVE, {"weights.txt": b"w"})
    refused = {
        "MemorySizeInMB": ({"MemorySizeInMB": 1536}, "ServerlessConfig.MemorySizeInMB"),
        "MaxConcurrency": ({"MaxConcurrency": 201}, "ServerlessConfig.MaxConcurrency"),
        "Provisioned": (
            {"MaxConcurrency": 2, "ProvisionedConcurrency": 3},
            "ServerlessConfig.ProvisionedConcurrency",
        ),
    }
    for config, member in refused.values():
        with pytest.raises(ClientError) as error:
            serverless_config(deployer, model, **config)
        assert error.value.response["Error"]["Code"] == "ValidationException"
        assert member in error.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as both:
        deployer.sagemaker.create_endpoint_config(
            EndpointConfigName=unique_name("cfg"),
            ProductionVariants=[
                {
                    "VariantName": "AllTraffic",
                    "ModelName": model,
                    "InstanceType": "ml.m5.large",
                    "ServerlessConfig": {"MemorySizeInMB": 1024, "MaxConcurrency": 1},
                }
            ],
        )
    assert "ProductionVariants.1.InstanceType" in both.value.response["Error"]["Message"]

    # InService with no instance; its concurrency changed in place.
    name = serverless_endpoint(deployer, model)
    deployer.sagemaker.update_endpoint_weights_and_capacities(
        EndpointName=name,
        DesiredWeightsAndCapacities=[
            {"VariantName": "AllTraffic", "ServerlessUpdateConfig": {"MaxConcurrency": 5}}
        ],
    )
    (variant,) = deployer.wait(name, ("InService",))["ProductionVariants"]
    changed = {"MemorySizeInMB": 1024, "MaxConcurrency": 5}
    assert variant["CurrentServerlessConfig"] == variant["DesiredServerlessConfig"] == changed
    assert instances_of(name) == 0


def test_an_instance_comes_with_invocations_and_goes_when_idle(idle_deployer: Deployer) -> None:
    deployer = idle_deployer
    model = deployer.model(SERVE, {"weights.txt": b"w1\n"})
    name = unique_name("ep")
    deployer.endpoints.append(name)
    config = serverless_config(deployer, model, MemorySizeInMB=2048)
    deployer.sagemaker.create_endpoint(EndpointName=name, EndpointConfigName=config)
    described = deployer.wait(name)
    assert described["EndpointStatus"] == "InService", described.get("FailureReason")
    (variant,) = described["ProductionVariants"]
    shown = {"MemorySizeInMB": 2048, "MaxConcurrency": 1}
    assert variant["CurrentServerlessConfig"] == variant["DesiredServerlessConfig"] == shown
    assert "CurrentInstanceCount" not in variant
    assert instances_of(name) == 0  # nothing runs until it is invoked

    runtime = one_attempt(deployer)
    answer = runtime.invoke_endpoint(EndpointName=name, Body=b"x")  # a cold start
    assert answer["Body"].read() == b"w1 x"
    assert instances_of(name) == 1

    # MaxConcurrency 1: while one invocation is under way, another is throttled.
    held: list[bytes] = []

    def hold() -> None:  # until it is let in (the other loop's invocations may take the slot)
        while not held:
            try:
                held.append(runtime.invoke_endpoint(EndpointName=name, Body=b"hold")["Body"].read())
            except ClientError as error:
                assert error.response["Error"]["Code"] == "ThrottlingException"

    holding = threading.Thread(target=hold)
    holding.start()
    throttled: dict[str, Any] = {}
    try:
        while holding.is_alive() and not throttled:
            try:
                runtime.invoke_endpoint(EndpointName=name, Body=b"y")
            except ClientError as error:
                throttled = dict(error.response)
    finally:
        holding.join()
    assert held == [b"w1 hold"]
    assert throttled["Error"]["Code"] == "ThrottlingException"
    assert throttled["ResponseMetadata"]["HTTPStatusCode"] == 429

    # A streamed invocation under way counts against MaxConcurrency too.
    streamed: list[bytes] = []

    def stream() -> None:
        while not streamed:
            try:
                answer = runtime.invoke_endpoint_with_response_stream(
                    EndpointName=name, Body=b"hold"
                )
                streamed.append(b"".join(e["PayloadPart"]["Bytes"] for e in answer["Body"]))
            except ClientError as error:
                assert error.response["Error"]["Code"] == "ThrottlingException"

    streaming = threading.Thread(target=stream)
    streaming.start()
    throttled = {}
    try:
        while streaming.is_alive() and not throttled:
            try:
                runtime.invoke_endpoint(EndpointName=name, Body=b"y")
            except ClientError as error:
                throttled = dict(error.response)
    finally:
        streaming.join()
    assert streamed == [b"w1 hold"]
    assert throttled, "no invocation was throttled while the stream was under way"
    assert throttled["Error"]["Code"] == "ThrottlingException"

    # Idle for OPENMAKER_SERVERLESS_IDLE_SECONDS: back to no instance; invoked again, one more.
    wait_until(lambda: instances_of(name) == 0, "the idle instance to stop")
    assert runtime.invoke_endpoint(EndpointName=name, Body=b"z")["Body"].read() == b"w1 z"
    watch = cloudwatch(deployer.server)
    wait_until(
        lambda: (statistic(watch, name, "ModelSetupTime", "SampleCount") or (0.0, ""))[0] >= 2,
        "both cold starts measured",
    )
    total = statistic(watch, name, "ModelSetupTime", "Sum")
    assert total is not None and total[0] > 0 and total[1] == "Microseconds"


def test_concurrent_invocations_start_an_instance_each_and_idle_ones_stop(
    idle_deployer: Deployer,
) -> None:
    """Each serverless instance serves one invocation at a time: two at once start two (two
    cold starts); idle, they stop down to ProvisionedConcurrency."""
    deployer = idle_deployer
    model = deployer.model(SERVE, {"weights.txt": b"w\n"})
    cold, warm = unique_name("ep"), unique_name("ep")
    configs = {
        cold: serverless_config(deployer, model, MaxConcurrency=2),
        warm: serverless_config(deployer, model, MaxConcurrency=2, ProvisionedConcurrency=1),
    }
    for name, config in configs.items():
        deployer.endpoints.append(name)
        deployer.sagemaker.create_endpoint(EndpointName=name, EndpointConfigName=config)
    for name in configs:
        described = deployer.wait(name)
        assert described["EndpointStatus"] == "InService", described.get("FailureReason")
    assert (instances_of(cold), instances_of(warm)) == (0, 1)

    # Two invocations at once of each, held long enough for a second instance to start while
    # the first still serves.
    threads, answers = _sent_at_once(deployer, [cold, cold, warm, warm], b"hold4")
    try:
        _wait_instances(cold, 2, "a second instance")
        _wait_instances(warm, 2, "a second instance")
    finally:
        for thread in threads:
            thread.join()
    assert answers == [b"w hold4"] * 4
    _wait_instances(cold, 0, "the idle instances to stop")
    _wait_instances(warm, 1, "the idle instances to stop, but the one kept warm")
    # A cold start each for the first two; the warm endpoint's first took its warm instance.
    watch = cloudwatch(deployer.server)
    for name, count in ((cold, 2), (warm, 1)):
        wait_until(partial(_cold_starts, watch, name, count), f"{name}'s cold starts measured")


def test_a_cold_start_that_does_not_fit_throttles_who_waits_for_it(
    small_deployer: Deployer,
) -> None:
    deployer = small_deployer
    model = deployer.model(SERVE, {"weights.txt": b"w\n"})
    name = serverless_endpoint(deployer, model, MaxConcurrency=2)
    runtime = one_attempt(deployer)
    outcomes: list[tuple[str, str]] = []  # (error code or "", message or answer)

    def send() -> None:
        try:
            answer = runtime.invoke_endpoint(EndpointName=name, Body=b"hold4")
            outcomes.append(("", answer["Body"].read().decode()))
        except ClientError as error:
            outcomes.append((error.response["Error"]["Code"], error.response["Error"]["Message"]))

    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # One instance fits: one invocation is answered, the other throttled, saying why.
    assert sorted(code for code, _ in outcomes) == ["", "ThrottlingException"], outcomes
    assert ("", "w hold4") in outcomes
    (refused,) = [message for code, message in outcomes if code]
    assert "InsufficientInstanceCapacity" in refused
    assert instances_of(name) == 1


def _wait_instances(endpoint: str, count: int, what: str) -> None:
    wait_until(lambda: instances_of(endpoint) == count, f"{endpoint}: {what}")


def _cold_starts(watch: Any, endpoint: str, count: int) -> bool:
    measured = statistic(watch, endpoint, "ModelSetupTime", "SampleCount")
    return measured is not None and measured[0] == count


def _sent_at_once(
    deployer: Deployer, endpoints: list[str], body: bytes
) -> tuple[list[threading.Thread], list[bytes]]:
    """Invocations of `endpoints` sent at the same time: the threads sending them, and their
    answers, in order, once the threads have ended."""
    answers = [b""] * len(endpoints)

    def send(index: int, endpoint: str) -> None:
        answer = deployer.runtime.invoke_endpoint(EndpointName=endpoint, Body=body)
        answers[index] = answer["Body"].read()

    threads = [threading.Thread(target=send, args=item) for item in enumerate(endpoints)]
    for thread in threads:
        thread.start()
    return threads, answers


@pytest.fixture
def tight_deployer(tmp_path: Path) -> Iterator[Deployer]:
    """Room for two serverless instances' CPUs, but 2 GiB: less than an ml.t3.medium's 4."""
    yield from _deployer(
        tmp_path, OPENMAKER_CAPACITY="strict", OPENMAKER_CPUS="4", OPENMAKER_MEMORY_GIB="2"
    )


def test_a_serverless_instance_fits_and_is_held_by_its_memory_size(
    tight_deployer: Deployer,
) -> None:
    deployer = tight_deployer
    model = deployer.model(LIMITED, {"weights.txt": b"w\n"})
    runtime = one_attempt(deployer)
    # 3072 MB could never fit in 2 GiB: refused at once.
    with pytest.raises(ClientError) as never:
        serverless_config(deployer, model, MemorySizeInMB=3072)
    assert never.value.response["Error"]["Code"] == "ResourceLimitExceeded"
    assert "3 GiB memory" in never.value.response["Error"]["Message"]
    endpoints = {}
    for memory in (1024, 2048):
        endpoints[memory] = serverless_endpoint(deployer, model, MemorySizeInMB=memory)
    # 1024 MB fit: the instance starts, its container held to them.
    name = endpoints[1024]
    report = runtime.invoke_endpoint(EndpointName=name, Body=b"limits")["Body"].read()
    instance = report.decode().removeprefix("w hello ").splitlines()[0]
    key = instance_cgroup(deployer.server.home, f"endpoint:{name}", instance)
    cgroup = cgroup_path(key, "memory")
    assert cgroup is not None
    limit_file = cgroup / "memory.max"
    if not limit_file.exists():  # cgroup v1
        limit_file = cgroup / "memory.limit_in_bytes"
    assert int(limit_file.read_text()) == 1024 * 1024**2
    # 2048 MB more do not, while that instance is warm.
    with pytest.raises(ClientError) as refused:
        runtime.invoke_endpoint(EndpointName=endpoints[2048], Body=b"limits")
    error = refused.value.response["Error"]
    assert error["Code"] == "ThrottlingException"
    assert "InsufficientInstanceCapacity" in error["Message"]
    assert "ml.t3.medium of 2048 MB" in error["Message"]
