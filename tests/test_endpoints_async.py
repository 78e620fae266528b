"""Asynchronous inference and data capture for real: a real `openmaker server`, boto3's clients,
a model server in a local-folder image; results, failures, notifications and captures read
back from the embedded store and the endpoint's log group."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from openmaker.runtime import unavailable_reason
from tests.apiserver import ApiServer, running_api_server
from tests.helpers import unique_name
from tests.test_endpoint_metrics import cloudwatch, statistic
from tests.test_endpoints import Deployer, wait_until

pytestmark = pytest.mark.skipif(
    unavailable_reason() is not None, reason="endpoints need the bwrap sandbox"
)

# Answers `<n> <active> <body>`: n counts the invocations it took, active how many it had in
# hand at once (at most); `fail` is a 500. With `/opt/program/go` missing it holds every answer
# until the test puts it there (the image folder is /opt/program).
SERVE = """#!/usr/bin/env python3
import http.server, os, threading, time
lock, state = threading.Lock(), {"n": 0, "active": 0, "most": 0}
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with lock:
            state["n"] += 1
            state["active"] += 1
            state["most"] = max(state["most"], state["active"])
            n = state["n"]
        while not os.path.exists("/opt/program/go"):
            time.sleep(0.05)
        time.sleep(0.05)
        with lock:
            most = state["most"]
            state["active"] -= 1
        status = 500 if body == b"fail" else 200
        answer = b"boom" if status == 500 else b"%d %d %s" % (n, most, body)
        self.send_response(status)
        self.send_header("Content-Type", "text/csv")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"""
BUCKET = "async"
SNS = "arn:aws:sns:us-east-1:000000000000:"


def async_endpoint(
    deployer: Deployer,
    model: str,
    prefix: str,
    topics: tuple[str, ...] = ("ok", "bad"),
    failures: bool = True,
) -> str:
    """An async endpoint of `model`, its objects under `prefix`; `topics`: its SuccessTopic's and
    ErrorTopic's names, "" for none; `failures`: whether it has an S3FailurePath."""
    name = unique_name("async")
    success, error = (SNS + t if t else None for t in topics)
    output = {"S3OutputPath": f"s3://{BUCKET}/{prefix}/out"}
    if failures:
        output["S3FailurePath"] = f"s3://{BUCKET}/{prefix}/fail"
    deployer.sagemaker.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": model,
                "InstanceType": "ml.m5.large",
                "InitialInstanceCount": 1,
            }
        ],
        AsyncInferenceConfig={
            "OutputConfig": {
                **output,
                "NotificationConfig": {
                    k: v for k, v in (("SuccessTopic", success), ("ErrorTopic", error)) if v
                },
            },
            "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 1},
        },
    )
    deployer.endpoints.append(name)
    deployer.sagemaker.create_endpoint(EndpointName=name, EndpointConfigName=name)
    described = deployer.wait(name)
    assert described["EndpointStatus"] == "InService", described.get("FailureReason")
    return name


def read_s3(deployer: Deployer, uri: str) -> bytes | None:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    try:
        return bytes(deployer.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except ClientError:
        return None


def put_input(deployer: Deployer, key: str, body: bytes) -> str:
    deployer.s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    return f"s3://{BUCKET}/{key}"


@pytest.fixture
def deployer(api_server: ApiServer, tmp_path: Path) -> Iterator[Deployer]:
    deploy = Deployer(api_server, tmp_path)
    with contextlib.suppress(ClientError):  # made by an earlier test
        deploy.s3.create_bucket(Bucket=BUCKET)
    try:
        yield deploy
    finally:
        deploy.delete_all()


def test_async_results_failures_and_notifications(deployer: Deployer, tmp_path: Path) -> None:
    model = deployer.model(SERVE, {"weights.txt": b"w\n"})
    (tmp_path / model / "go").touch()
    name = async_endpoint(deployer, model, "a")
    runtime = deployer.runtime
    invoked = {}
    for body in (b"one", b"two", b"three", b"fail"):
        location = put_input(deployer, f"in/{body.decode()}.csv", body)
        invoked[body] = runtime.invoke_endpoint_async(
            EndpointName=name,
            InputLocation=location,
            ContentType="text/csv",
            InferenceId=f"id-{body.decode()}",
        )
    # A missing input object, and one over the 1 GB an async request may have (sparse, in the
    # embedded store's folder), fail with the reason.
    invoked[b"missing"] = runtime.invoke_endpoint_async(
        EndpointName=name, InputLocation=f"s3://{BUCKET}/in/nothing-here"
    )
    huge = deployer.server.home / "s3" / BUCKET / "in" / "huge.bin"
    with open(huge, "wb") as file:
        file.truncate(1024**3 + 1)
    invoked[b"huge"] = runtime.invoke_endpoint_async(
        EndpointName=name, InputLocation=f"s3://{BUCKET}/in/huge.bin"
    )
    for answer in invoked.values():
        assert answer["OutputLocation"].startswith(f"s3://{BUCKET}/a/out/")
        assert answer["OutputLocation"].endswith(".out")
        assert answer["FailureLocation"].startswith(f"s3://{BUCKET}/a/fail/")
        assert answer["FailureLocation"].endswith("-error.out")
    assert invoked[b"one"]["InferenceId"] == "id-one"

    def result(body: bytes) -> bytes | None:
        answer = invoked[body]
        return read_s3(deployer, answer["OutputLocation"]) or read_s3(
            deployer, answer["FailureLocation"]
        )

    wait_until(lambda: all(result(b) is not None for b in invoked), "every async result")
    # In the order they came, one at a time (MaxConcurrentInvocationsPerInstance 1).
    assert result(b"one") == b"1 1 one"
    assert result(b"two") == b"2 1 two"
    assert result(b"three") == b"3 1 three"
    assert read_s3(deployer, invoked[b"fail"]["OutputLocation"]) is None
    assert b"boom" in (result(b"fail") or b"")
    assert b"does not exist" in (result(b"missing") or b"")
    assert b"more than the 1073741824" in (result(b"huge") or b"")

    logs = deployer.server.client("logs")
    group = f"/aws/sagemaker/Endpoints/{name}"

    def notifications() -> list[dict[str, Any]]:
        try:
            events = logs.get_log_events(logGroupName=group, logStreamName="AsyncNotifications")
        except ClientError:
            return []
        return [json.loads(e["message"]) for e in events["events"]]

    wait_until(lambda: len(notifications()) == len(invoked), "a notification for each")
    by_id = {n["inferenceId"]: n for n in notifications()}
    ok = by_id["id-one"]
    assert ok["eventName"] == "InferenceResult" and ok["invocationStatus"] == "Completed"
    assert ok["requestParameters"]["inputLocation"] == f"s3://{BUCKET}/in/one.csv"
    assert ok["responseParameters"]["outputLocation"] == invoked[b"one"]["OutputLocation"]
    failed = by_id["id-fail"]
    assert failed["invocationStatus"] == "Failed"
    assert failed["responseParameters"]["failureLocation"] == invoked[b"fail"]["FailureLocation"]

    # The metrics SageMaker publishes for asynchronous endpoints, and none of the real-time
    # ones it does not (Invocations, InvocationsPerInstance, OverheadLatency).
    client = cloudwatch(deployer.server)
    wait_until(
        lambda: statistic(client, name, "InvocationsProcessed", "Sum") == (6.0, "Count"),
        "the async invocations counted",
    )
    assert statistic(client, name, "InvocationFailures", "Sum") == (3.0, "Count")
    assert statistic(client, name, "RequestDownloadFailures", "Sum") == (2.0, "Count")
    assert statistic(client, name, "RequestDownloadLatency", "SampleCount") == (
        4.0, "Microseconds",
    )  # fmt: skip
    # The four the container was sent: "fail" was its 500.
    assert statistic(client, name, "Invocation5XXErrors", "Sum") == (1.0, "None")
    assert statistic(client, name, "Invocation5XXErrors", "SampleCount") == (4.0, "None")
    assert statistic(client, name, "ModelLatency", "SampleCount") == (4.0, "Microseconds")
    assert statistic(client, name, "ResponseUploadLatency", "SampleCount") == (
        3.0, "Microseconds",
    )  # fmt: skip
    assert statistic(client, name, "TimeInBacklog", "SampleCount") == (6.0, "Microseconds")
    assert statistic(client, name, "TotalProcessingTime", "SampleCount") == (6.0, "Milliseconds")
    backlog = statistic(client, name, "ApproximateBacklogSize", "Maximum", variant=None)
    assert backlog is not None and backlog[0] >= 1 and backlog[1] == "Count"
    oldest = statistic(client, name, "ApproximateAgeOfOldestRequest", "Maximum", variant=None)
    assert oldest is not None and oldest[1] == "Seconds"
    assert statistic(client, name, "HasBacklogWithoutCapacity", "Maximum", variant=None) == (
        0.0, "None",
    )  # fmt: skip
    listed = client.list_metrics(
        Namespace="AWS/SageMaker", Dimensions=[{"Name": "EndpointName", "Value": name}]
    )["Metrics"]
    names = {m["MetricName"] for m in listed}
    assert not names & {"Invocations", "InvocationsPerInstance", "OverheadLatency"}
    own = [m for m in listed if m["MetricName"] == "ApproximateBacklogSizePerInstance"]
    assert own and own[0]["Dimensions"] == [{"Name": "EndpointName", "Value": name}]

    # Refused at once: an input that is no S3 object, an endpoint without AsyncInferenceConfig.
    with pytest.raises(ClientError) as bad:
        runtime.invoke_endpoint_async(EndpointName=name, InputLocation="/etc/passwd")
    assert bad.value.response["Error"]["Code"] == "ValidationError"
    assert "inputLocation" in bad.value.response["Error"]["Message"]


def test_queued_requests_survive_a_server_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with running_api_server(home, OPENMAKER_FILE_ROOTS=str(tmp_path)) as first:
        deployer = Deployer(first, tmp_path)
        deployer.s3.create_bucket(Bucket=BUCKET)
        model = deployer.model(SERVE, {"weights.txt": b"w\n"})  # held until `go` exists
        name = async_endpoint(deployer, model, "r")
        invoked = [
            deployer.runtime.invoke_endpoint_async(
                EndpointName=name, InputLocation=put_input(deployer, f"in/{i}", b"r%d" % i)
            )
            for i in range(3)
        ]
    # The server is gone; the endpoint's worker and its queue are not.
    with running_api_server(home, OPENMAKER_FILE_ROOTS=str(tmp_path)) as second:
        deployer = Deployer(second, tmp_path)
        deployer.endpoints.append(name)
        try:
            (tmp_path / model / "go").touch()
            wait_until(
                lambda: all(read_s3(deployer, i["OutputLocation"]) for i in invoked),
                "the queued requests' results",
            )
            answers = [read_s3(deployer, i["OutputLocation"]) for i in invoked]
            assert answers == [b"1 1 r0", b"2 1 r1", b"3 1 r2"]
        finally:
            deployer.delete_all()
        assert not (home / "endpoints" / name / "async-queue").exists()


def test_data_capture_writes_what_sagemaker_writes(deployer: Deployer, tmp_path: Path) -> None:
    model = deployer.model(SERVE, {"weights.txt": b"w\n"})
    (tmp_path / model / "go").touch()
    name = unique_name("capture")
    deployer.sagemaker.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[
            {
                "VariantName": "blue",
                "ModelName": model,
                "InstanceType": "ml.m5.large",
                "InitialInstanceCount": 1,
            }
        ],
        DataCaptureConfig={
            "EnableCapture": True,
            "InitialSamplingPercentage": 100,
            "DestinationS3Uri": f"s3://{BUCKET}/capture",
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            "CaptureContentTypeHeader": {"CsvContentTypes": ["text/csv"]},
        },
    )
    deployer.endpoints.append(name)
    deployer.sagemaker.create_endpoint(EndpointName=name, EndpointConfigName=name)
    assert deployer.wait(name)["EndpointStatus"] == "InService"
    deployer.runtime.invoke_endpoint(
        EndpointName=name, Body=b"1,2,3", ContentType="text/csv", InferenceId="cap-1"
    )
    deployer.runtime.invoke_endpoint(
        EndpointName=name, Body=b"\x00\xff", ContentType="application/x-bytes"
    )

    def captured() -> list[dict[str, Any]]:
        listed = deployer.s3.list_objects_v2(Bucket=BUCKET, Prefix=f"capture/{name}/")
        lines = []
        for item in listed.get("Contents", []):
            body = deployer.s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
            lines += [json.loads(line) for line in body.decode().splitlines()]
        return lines

    wait_until(lambda: len(captured()) == 2, "both invocations captured")
    key = deployer.s3.list_objects_v2(Bucket=BUCKET, Prefix=f"capture/{name}/")["Contents"][0]
    parts = key["Key"].split("/")
    assert parts[:3] == ["capture", name, "blue"] and len(parts) == 8
    assert [len(p) for p in parts[3:7]] == [4, 2, 2, 2] and parts[7].endswith(".jsonl")
    csv_line = next(c for c in captured() if c["eventMetadata"].get("inferenceId") == "cap-1")
    assert csv_line["captureData"]["endpointInput"] == {
        "observedContentType": "text/csv",
        "mode": "INPUT",
        "data": "1,2,3",
        "encoding": "CSV",
    }
    output = csv_line["captureData"]["endpointOutput"]
    assert output["mode"] == "OUTPUT" and output["encoding"] == "CSV"
    assert output["data"].endswith("1,2,3")
    assert csv_line["eventMetadata"]["eventId"] and csv_line["eventMetadata"]["inferenceTime"]
    raw = next(
        c for c in captured() if c is not csv_line and "inferenceId" not in c["eventMetadata"]
    )
    assert raw["captureData"]["endpointInput"]["encoding"] == "BASE64"
    assert base64.b64decode(raw["captureData"]["endpointInput"]["data"]) == b"\x00\xff"


def test_bad_async_and_capture_configs_name_the_member(deployer: Deployer) -> None:
    model = deployer.model(SERVE, {"weights.txt": b"w\n"})
    variant = {
        "VariantName": "v",
        "ModelName": model,
        "InstanceType": "ml.m5.large",
        "InitialInstanceCount": 1,
    }
    with pytest.raises(ClientError) as bad_async:
        deployer.sagemaker.create_endpoint_config(
            EndpointConfigName=unique_name("bad"),
            ProductionVariants=[variant],
            AsyncInferenceConfig={"OutputConfig": {"S3OutputPath": "/tmp/out"}},
        )
    assert "S3OutputPath" in bad_async.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as bad_capture:
        deployer.sagemaker.create_endpoint_config(
            EndpointConfigName=unique_name("bad"),
            ProductionVariants=[variant],
            DataCaptureConfig={
                "InitialSamplingPercentage": 100,
                "DestinationS3Uri": "file:///etc",
                "CaptureOptions": [{"CaptureMode": "Input"}],
            },
        )
    assert "DestinationS3Uri" in bad_capture.value.response["Error"]["Message"]


def test_an_async_endpoint_scaled_to_zero_queues_and_says_it_has_no_capacity(
    deployer: Deployer, tmp_path: Path
) -> None:
    model = deployer.model(SERVE, {"weights.txt": b"w\n"})
    (tmp_path / model / "go").touch()
    name = async_endpoint(deployer, model, "zero")
    sagemaker, client = deployer.sagemaker, cloudwatch(deployer.server)

    def scale(count: int) -> None:
        sagemaker.update_endpoint_weights_and_capacities(
            EndpointName=name,
            DesiredWeightsAndCapacities=[
                {"VariantName": "AllTraffic", "DesiredInstanceCount": count}
            ],
        )
        wait_until(
            lambda: _instances(sagemaker, name) == (count, "InService"), f"{count} instances"
        )

    scale(0)  # as Application Auto Scaling does with a MinCapacity of 0
    location = put_input(deployer, "in/zero.csv", b"queued")
    answer = deployer.runtime.invoke_endpoint_async(EndpointName=name, InputLocation=location)
    now = datetime.now(UTC)
    query = {
        "Id": "nocapacity",
        "MetricStat": {
            "Metric": {
                "Namespace": "AWS/SageMaker",
                "MetricName": "HasBacklogWithoutCapacity",
                "Dimensions": [{"Name": "EndpointName", "Value": name}],
            },
            "Period": 60,
            "Stat": "Maximum",
        },
    }

    def without_capacity() -> bool:
        found = client.get_metric_data(
            MetricDataQueries=[query],
            StartTime=now - timedelta(minutes=5),
            EndTime=now + timedelta(minutes=5),
        )["MetricDataResults"][0]
        return 1.0 in found["Values"]

    wait_until(without_capacity, "HasBacklogWithoutCapacity at 1")
    assert statistic(client, name, "HasBacklogWithoutCapacity", "Maximum", variant=None) == (
        1.0, "None",
    )  # fmt: skip
    assert read_s3(deployer, answer["OutputLocation"]) is None  # it waits
    # Scaled up again, the request queued meanwhile is answered.
    scale(1)
    wait_until(lambda: read_s3(deployer, answer["OutputLocation"]), "the queued request answered")
    assert read_s3(deployer, answer["OutputLocation"]) == b"1 1 queued"


def _instances(sagemaker: Any, name: str) -> tuple[int, str]:
    described = sagemaker.describe_endpoint(EndpointName=name)
    (variant,) = described["ProductionVariants"]
    return variant["CurrentInstanceCount"], described["EndpointStatus"]


def test_an_async_request_may_carry_its_input_inline(deployer: Deployer, tmp_path: Path) -> None:
    model = deployer.model(SERVE, {"weights.txt": b"w\n"})
    (tmp_path / model / "go").touch()
    name = async_endpoint(deployer, model, "inline")
    runtime = deployer.runtime
    answer = runtime.invoke_endpoint_async(
        EndpointName=name, Body=b"inline", ContentType="text/csv"
    )
    wait_until(lambda: read_s3(deployer, answer["OutputLocation"]), "the inline request answered")
    assert read_s3(deployer, answer["OutputLocation"]) == b"1 1 inline"
    location = put_input(deployer, "in/both.csv", b"both")
    refused: dict[str, dict[str, Any]] = {
        "both": {"Body": b"x", "InputLocation": location},
        "neither": {},
        "too large": {"Body": b"x" * 128_001},
    }
    for why, members in refused.items():
        with pytest.raises(ClientError) as error:
            runtime.invoke_endpoint_async(EndpointName=name, **members)
        assert error.value.response["Error"]["Code"] == "ValidationError", why
