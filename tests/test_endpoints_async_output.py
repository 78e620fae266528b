"""Asynchronous inference, where its output goes and what retiring an instance does to it: a
real `openmaker server`, boto3's clients, a model server in a local-folder image."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from openmaker.runtime import unavailable_reason
from tests.apiserver import ApiServer, running_api_server
from tests.test_endpoints import Deployer, wait_until
from tests.test_endpoints_async import BUCKET, SERVE, async_endpoint, put_input, read_s3

pytestmark = pytest.mark.skipif(
    unavailable_reason() is not None, reason="endpoints need the bwrap sandbox"
)

# SERVE, saying on its log stream which request it took as soon as it takes it.
TELLING = SERVE.replace(
    '        with lock:\n            state["n"] += 1',
    "        print('took', body.decode(), flush=True)\n"
    '        with lock:\n            state["n"] += 1',
    1,
)


def test_output_path_extension_and_filename_place_the_output(
    api_server: ApiServer, tmp_path: Path
) -> None:
    deployer = Deployer(api_server, tmp_path)
    with contextlib.suppress(ClientError):
        deployer.s3.create_bucket(Bucket=BUCKET)
    try:
        model = deployer.model(SERVE, {"weights.txt": b"w\n"})
        (tmp_path / model / "go").touch()
        name = async_endpoint(deployer, model, "named")
        runtime = deployer.runtime
        answer = runtime.invoke_endpoint_async(
            EndpointName=name,
            InputLocation=put_input(deployer, "in/named.csv", b"named"),
            S3OutputPathExtension="runs/7/",
            Filename="answer.csv",
        )
        assert answer["OutputLocation"] == f"s3://{BUCKET}/named/out/runs/7/answer.csv"
        wait_until(lambda: read_s3(deployer, answer["OutputLocation"]), "the named output")
        assert read_s3(deployer, answer["OutputLocation"]) == b"1 1 named"
        refused: dict[str, dict[str, str]] = {
            "an S3 URI": {"S3OutputPathExtension": "s3://elsewhere/x"},
            "a space": {"S3OutputPathExtension": "a b"},
            "a '..' segment": {"S3OutputPathExtension": "a/../../b"},
            "over 512": {"S3OutputPathExtension": "a" * 513},
            "two dots": {"Filename": "a.b.c"},
            "a slash": {"Filename": "x/y"},
            "over 32": {"Filename": "f" * 33},
        }
        for why, members in refused.items():
            with pytest.raises(ClientError) as error:
                runtime.invoke_endpoint_async(
                    EndpointName=name, InputLocation=f"s3://{BUCKET}/in/named.csv", **members
                )
            assert error.value.response["Error"]["Code"] == "ValidationError", why
            (member,) = members
            assert f"at '{member[0].lower()}{member[1:]}'" in str(error.value), why
    finally:
        deployer.delete_all()


def test_scale_in_lets_async_requests_in_hand_finish(tmp_path: Path) -> None:
    """Real-time invocations are drained for OPENMAKER_INVOCATION_SECONDS (1 s here) before an
    instance stops; an asynchronous request in hand may take its own InvocationTimeoutSeconds."""
    home = tmp_path / "home"
    home.mkdir()
    with running_api_server(
        home, OPENMAKER_FILE_ROOTS=str(tmp_path), OPENMAKER_INVOCATION_SECONDS="1"
    ) as server:
        deployer = Deployer(server, tmp_path)
        try:
            deployer.s3.create_bucket(Bucket=BUCKET)
            model = deployer.model(TELLING, {"weights.txt": b"w\n"})  # held until `go` exists
            name = unique_async(deployer, model)
            logs = deployer.server.client("logs")
            group = f"/aws/sagemaker/Endpoints/{name}"

            def messages() -> list[str]:
                try:
                    events = logs.filter_log_events(logGroupName=group)["events"]
                except ClientError:
                    return []
                return [str(e["message"]) for e in events]

            invoked = [
                deployer.runtime.invoke_endpoint_async(
                    EndpointName=name,
                    InputLocation=put_input(deployer, f"in/held{i}", b"held%d" % i),
                    InvocationTimeoutSeconds=600,
                )
                for i in range(2)
            ]
            # One request in the hand of each instance (one at a time each).
            wait_until(
                lambda: sum(m.startswith("took held") for m in messages()) == 2, "both taken"
            )
            deployer.sagemaker.update_endpoint_weights_and_capacities(
                EndpointName=name,
                DesiredWeightsAndCapacities=[
                    {"VariantName": "AllTraffic", "DesiredInstanceCount": 1}
                ],
            )
            # Past the real-time drain: the retired instance waits for its request (cut short,
            # the request would fail).
            wait_until(
                lambda: (
                    any("asynchronous invocations in hand end" in m for m in messages())
                    or any(read_s3(deployer, i["FailureLocation"]) for i in invoked)
                ),
                "the retired instance waiting for its request, or the request failing",
            )
            for i in invoked:
                assert read_s3(deployer, i["FailureLocation"]) is None
            (tmp_path / model / "go").touch()
            wait_until(
                lambda: all(read_s3(deployer, i["OutputLocation"]) for i in invoked),
                "both answered",
            )
            for i in invoked:
                assert read_s3(deployer, i["FailureLocation"]) is None
            wait_until(lambda: _counts(deployer.sagemaker, name) == (1, "InService"), "1 left")
        finally:
            deployer.delete_all()


def unique_async(deployer: Deployer, model: str) -> str:
    name = async_endpoint(deployer, model, "retire")
    deployer.sagemaker.update_endpoint_weights_and_capacities(
        EndpointName=name,
        DesiredWeightsAndCapacities=[{"VariantName": "AllTraffic", "DesiredInstanceCount": 2}],
    )
    wait_until(lambda: _counts(deployer.sagemaker, name) == (2, "InService"), "2 instances")
    return name


def _counts(sagemaker: Any, name: str) -> tuple[int, str]:
    described = sagemaker.describe_endpoint(EndpointName=name)
    (variant,) = described["ProductionVariants"]
    return variant["CurrentInstanceCount"], described["EndpointStatus"]
