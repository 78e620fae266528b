"""Asynchronous inference, where its output goes and what retiring an instance does to it: a
real `openmaker server`, boto3's clients, a model server in a local-folder image."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from openmaker.runtime import unavailable_reason
from openmaker.serving.async_runner import NOTIFICATIONS
from tests.apiserver import ApiServer, running_api_server
from tests.test_endpoint_metrics import cloudwatch, statistic
from tests.test_endpoints import Deployer, wait_until
from tests.test_endpoints_async import BUCKET, SERVE, async_endpoint, put_input, read_s3
from tests.test_endpoints_sdk import UUID

pytestmark = pytest.mark.skipif(
    unavailable_reason() is not None, reason="endpoints need the bwrap sandbox"
)


@pytest.fixture
def deployer(api_server: ApiServer, tmp_path: Path) -> Iterator[Deployer]:
    """A deployer with the async tests' bucket; what it deployed goes when the test ends."""
    made = Deployer(api_server, tmp_path)
    with contextlib.suppress(ClientError):
        made.s3.create_bucket(Bucket=BUCKET)
    try:
        yield made
    finally:
        made.delete_all()


# SERVE, saying on its log stream which request it took as soon as it takes it.
TELLING = SERVE.replace(
    '        with lock:\n            state["n"] += 1',
    "        print('took', body.decode(), flush=True)\n"
    '        with lock:\n            state["n"] += 1',
    1,
)


def test_output_path_extension_and_filename_place_the_output(
    deployer: Deployer, tmp_path: Path
) -> None:
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


def test_output_and_failure_names_and_what_notifications_say(
    deployer: Deployer, tmp_path: Path
) -> None:
    model = deployer.model(SERVE, {"weights.txt": b"w\n"})
    (tmp_path / model / "go").touch()
    name = async_endpoint(deployer, model, "ids")
    runtime = deployer.runtime
    # Two requests given one InferenceId (SageMaker takes both), one given none; only
    # the first says its content type.
    given = runtime.invoke_endpoint_async(
        EndpointName=name,
        InputLocation=put_input(deployer, "in/ids.csv", b"ids"),
        InferenceId="same-id",
        ContentType="text/csv",
        Accept="text/csv",
    )
    again = runtime.invoke_endpoint_async(
        EndpointName=name,
        InputLocation=put_input(deployer, "in/fail", b"fail"),
        InferenceId="same-id",
        CustomAttributes="trace=7",
    )
    made = runtime.invoke_endpoint_async(
        EndpointName=name, InputLocation=f"s3://{BUCKET}/in/ids.csv"
    )
    assert re.fullmatch(UUID, made["InferenceId"])
    assert given["InferenceId"] == again["InferenceId"] == "same-id"
    names = set()
    for answer in (given, again, made):
        named = re.fullmatch(rf"s3://{BUCKET}/ids/out/({UUID})\.out", answer["OutputLocation"])
        assert named is not None, answer
        # The failure object shares the output's name; neither is the InferenceId.
        assert answer["FailureLocation"] == f"s3://{BUCKET}/ids/fail/{named[1]}-error.out"
        assert named[1] != answer["InferenceId"]
        names.add(named[1])
    assert len(names) == 3

    wait_until(lambda: read_s3(deployer, again["FailureLocation"]), "the failure object")
    # The container's error answer, as it answered it.
    assert read_s3(deployer, again["FailureLocation"]) == b"boom"
    wait_until(lambda: read_s3(deployer, made["OutputLocation"]), "the last output")
    assert read_s3(deployer, given["OutputLocation"]) == b"1 1 ids"

    notes = notifications(deployer, name)
    wait_until(lambda: len(notes()) == 3, "three notifications")
    ok, failed, _ = sorted(notes(), key=lambda n: str(n["receivedTime"]))
    assert ok["inferenceId"] == failed["inferenceId"] == "same-id"
    assert ok["requestParameters"] == {
        "accept": "text/csv",
        "contentType": "text/csv",
        "endpointName": name,
        "inputLocation": f"s3://{BUCKET}/in/ids.csv",
    }
    assert ok["responseParameters"] == {
        "contentType": "text/csv",
        "outputLocation": given["OutputLocation"],
    }
    # No contentType for a request that gave none.
    assert failed["requestParameters"] == {
        "customAttributes": "trace=7",
        "endpointName": name,
        "inputLocation": f"s3://{BUCKET}/in/fail",
    }
    assert failed["invocationStatus"] == "Failed"
    assert failed["failureReason"].startswith(
        "ClientError: Received server error (500) from model."
    )
    for bad in ("tab\tinside", "x" * 65, "日本"):
        with pytest.raises(ClientError) as error:
            runtime.invoke_endpoint_async(
                EndpointName=name, InputLocation=f"s3://{BUCKET}/in/ids.csv", InferenceId=bad
            )
        assert error.value.response["Error"]["Code"] == "ValidationError", bad
        assert "at 'inferenceId'" in str(error.value), bad


def test_a_request_past_its_ttl_fails_with_no_instance_to_take_it(
    deployer: Deployer, tmp_path: Path
) -> None:
    model = deployer.model(SERVE, {"weights.txt": b"w\n"})
    name = async_endpoint(deployer, model, "ttl")
    deployer.sagemaker.update_endpoint_weights_and_capacities(
        EndpointName=name,
        DesiredWeightsAndCapacities=[{"VariantName": "AllTraffic", "DesiredInstanceCount": 0}],
    )
    wait_until(lambda: _counts(deployer.sagemaker, name) == (0, "InService"), "no instance")
    answer = deployer.runtime.invoke_endpoint_async(
        EndpointName=name,
        InputLocation=put_input(deployer, "in/ttl.csv", b"ttl"),
        RequestTTLSeconds=60,
    )
    # 60 s is the least RequestTTLSeconds: the queued request is made 61 s old instead of
    # waited for (its file moved to a name as old, as the queue names them).
    queue = deployer.server.home / "endpoints" / name / "async-queue"
    (entry,) = queue.glob("*.json")
    request = json.loads(entry.read_text())
    request["queued_at"] -= 61
    aged = queue / f"{int(request['queued_at'] * 1e9):020d}-aged.json"
    partial = queue / ".aged.partial"
    partial.write_text(json.dumps(request))
    partial.rename(aged)
    entry.unlink()
    wait_until(lambda: read_s3(deployer, answer["FailureLocation"]), "the request expired")
    reason = (read_s3(deployer, answer["FailureLocation"]) or b"").decode()
    assert "expired" in reason and "RequestTTLSeconds (60)" in reason, reason
    notes = notifications(deployer, name)
    wait_until(notes, "its notification")
    (note,) = notes()
    assert note["invocationStatus"] == "Failed" and note["failureReason"] == reason
    client = cloudwatch(deployer.server)
    wait_until(
        lambda: statistic(client, name, "ExpiredRequests", "Sum") == (1.0, "Count"),
        "ExpiredRequests counted",
    )


def test_each_notification_goes_only_to_a_topic_given(deployer: Deployer, tmp_path: Path) -> None:
    model = deployer.model(SERVE, {"weights.txt": b"w\n"})
    (tmp_path / model / "go").touch()
    # No SuccessTopic, no S3FailurePath.
    name = async_endpoint(deployer, model, "topics", topics=("", "bad"), failures=False)
    invoked = [
        deployer.runtime.invoke_endpoint_async(
            EndpointName=name, InputLocation=put_input(deployer, f"in/{body.decode()}", body)
        )
        for body in (b"fine", b"fail")
    ]
    assert "FailureLocation" not in invoked[1]
    notes = notifications(deployer, name)
    wait_until(notes, "the failure's notification")
    assert read_s3(deployer, invoked[0]["OutputLocation"]) == b"1 1 fine"
    (failed,) = notes()
    assert failed["invocationStatus"] == "Failed"
    # Nowhere written, as SageMaker's notification of a failure without a failure path.
    assert "responseParameters" not in failed


def notifications(deployer: Deployer, name: str) -> Callable[[], list[dict[str, Any]]]:
    """What the endpoint's notifications say, read again on each call."""
    logs = deployer.server.client("logs")

    def read() -> list[dict[str, Any]]:
        try:
            events = logs.get_log_events(
                logGroupName=f"/aws/sagemaker/Endpoints/{name}", logStreamName=NOTIFICATIONS
            )["events"]
        except ClientError:
            return []
        return [json.loads(e["message"]) for e in events]

    return read


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
