"""Batch transform for real: a real `openmaker server`, boto3, a model whose `serve` container
(a small Python HTTP server in a local-folder image, sandboxed, on its own bridge) sums the
numbers of each CSV line it is posted."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from openmaker.runtime import unavailable_reason
from tests.apiserver import ApiServer
from tests.helpers import unique_name
from tests.test_endpoint_metrics import cloudwatch
from tests.test_endpoints import make_serve_image, model_archive, wait_until

pytestmark = pytest.mark.skipif(
    unavailable_reason() is not None, reason="transform jobs need the bwrap sandbox"
)

# Each line of a request is summed; a line holding `bad` is refused (400), `slow` waits for
# ever. Every request's size in lines is logged, with the batch variables it was started with.
SERVE = """#!/usr/bin/env python3
import http.server, os, time
print("batch", os.environ.get("SAGEMAKER_BATCH"), os.environ.get("SAGEMAKER_BATCH_STRATEGY"),
      os.environ.get("SAGEMAKER_MAX_PAYLOAD_IN_MB"), flush=True)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/ping" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def do_POST(self):
        lines = self.rfile.read(int(self.headers["Content-Length"])).decode().splitlines()
        print("request of", len(lines), "lines", flush=True)
        if any("slow" in line for line in lines):
            time.sleep(3600)
        if any("bad" in line for line in lines):
            answer, status = b"cannot sum: bad", 400
        else:
            answer = "".join(f"{sum(float(v) for v in l.split(',') if v)}\\n" for l in lines)
            answer, status = answer.encode(), 200
        self.send_response(status)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"""


class Transforms:
    """A model, input objects and transform jobs through the API; every job stopped at the end."""

    def __init__(self, server: ApiServer, tmp_path: Path) -> None:
        self.server, self.tmp_path = server, tmp_path
        self.sagemaker = server.client("sagemaker")
        self.s3 = server.client("s3")
        self.jobs: list[str] = []
        with contextlib.suppress(ClientError):
            self.s3.create_bucket(Bucket="batch")

    def model(self, program: str = SERVE) -> str:
        name = unique_name("summer")
        image = make_serve_image(self.tmp_path / name, program)
        key = f"{name}/model.tar.gz"
        self.s3.put_object(Bucket="batch", Key=key, Body=model_archive({"m.txt": b"sum"}))
        self.sagemaker.create_model(
            ModelName=name,
            PrimaryContainer={"Image": str(image), "ModelDataUrl": f"s3://batch/{key}"},
            ExecutionRoleArn="arn:aws:iam::000000000000:role/openmaker",
        )
        return name

    def inputs(self, objects: dict[str, str]) -> str:
        prefix = unique_name("in")
        for key, text in objects.items():
            self.s3.put_object(Bucket="batch", Key=f"{prefix}/{key}", Body=text.encode())
        return prefix

    def create(self, model: str, prefix: str, count: int = 1, **extra: Any) -> str:
        name = unique_name("tj")
        self.jobs.append(name)
        request: dict[str, Any] = {
            "TransformJobName": name,
            "ModelName": model,
            "BatchStrategy": "MultiRecord",
            "MaxPayloadInMB": 1,
            "TransformInput": {
                "DataSource": {
                    "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://batch/{prefix}/"}
                },
                "ContentType": "text/csv",
                "SplitType": "Line",
            },
            "TransformOutput": {"S3OutputPath": f"s3://batch/out-{name}", "AssembleWith": "Line"},
            "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": count},
            **extra,
        }
        self.sagemaker.create_transform_job(**request)
        return name

    def wait(
        self, name: str, statuses: tuple[str, ...] = ("Completed", "Failed", "Stopped")
    ) -> Any:
        found: dict[str, Any] = {}

        def ended() -> bool:
            found.update(self.sagemaker.describe_transform_job(TransformJobName=name))
            return found["TransformJobStatus"] in statuses

        wait_until(ended, f"transform job {name} in {statuses}")
        return found

    def output(self, name: str, key: str) -> str:
        answer = self.s3.get_object(Bucket="batch", Key=f"out-{name}/{key}")
        return str(answer["Body"].read().decode())

    def output_keys(self, name: str) -> list[str]:
        listed = self.s3.list_objects_v2(Bucket="batch", Prefix=f"out-{name}/")
        return sorted(o["Key"].removeprefix(f"out-{name}/") for o in listed.get("Contents", []))

    def stop_all(self) -> None:
        for name in self.jobs:
            with contextlib.suppress(ClientError):
                self.sagemaker.stop_transform_job(TransformJobName=name)
        for name in self.jobs:
            with contextlib.suppress(ClientError):
                self.wait(name)


@pytest.fixture
def transforms(api_server: ApiServer, tmp_path: Path) -> Iterator[Transforms]:
    made = Transforms(api_server, tmp_path)
    try:
        yield made
    finally:
        made.stop_all()


def lines(count: int, start: int = 0) -> str:
    return "".join(f"{i},{i},1\n" for i in range(start, start + count))


def sums(count: int, start: int = 0) -> str:
    return "".join(f"{float(2 * i + 1)}\n" for i in range(start, start + count))


def test_objects_spread_over_two_instances_come_back_in_order(transforms: Transforms) -> None:
    model = transforms.model()
    # 40,000 lines (about 400 KB... over 1 MB with the third): several mini-batches of 1 MB.
    objects = {"a.csv": lines(5), "b/c.csv": lines(120_000, 7), "d.csv": lines(3, 1)}
    prefix = transforms.inputs(objects)
    name = transforms.create(model, prefix, count=2)
    described = transforms.wait(name)
    assert described["TransformJobStatus"] == "Completed", described.get("FailureReason")
    assert described["TransformStartTime"] <= described["TransformEndTime"]
    assert described["BatchStrategy"] == "MultiRecord"

    assert transforms.output_keys(name) == ["a.csv.out", "b/c.csv.out", "d.csv.out"]
    assert transforms.output(name, "a.csv.out") == sums(5)
    assert transforms.output(name, "b/c.csv.out") == sums(120_000, 7)
    assert transforms.output(name, "d.csv.out") == sums(3, 1)

    # Two instances, each a stream `<job>/<instance-id>-<epoch>`; the containers were told
    # they serve a batch job, and got mini-batches of many records, none over 1 MB.
    logs = transforms.server.client("logs")
    group = "/aws/sagemaker/TransformJobs"
    streams = logs.describe_log_streams(logGroupName=group, logStreamNamePrefix=f"{name}/")
    names = [s["logStreamName"] for s in streams["logStreams"]]
    assert len(names) == 2
    assert all(n.startswith(f"{name}/i-") and n.rsplit("-", 1)[1].isdigit() for n in names)
    events = logs.filter_log_events(logGroupName=group, logStreamNamePrefix=f"{name}/")
    messages = [e["message"] for e in events["events"]]
    assert messages.count("batch true MULTI_RECORD 1") == 2
    batch_sizes = [int(m.split()[2]) for m in messages if m.startswith("request of")]
    assert max(batch_sizes) > 1000  # many records a request
    assert sum(batch_sizes) == 5 + 120_000 + 3

    summaries = transforms.sagemaker.list_transform_jobs(NameContains=name)
    (summary,) = summaries["TransformJobSummaries"]
    assert summary["TransformJobStatus"] == "Completed"

    # Each instance's utilization, as SageMaker names its host: `<job>/<instance-id>`.
    metrics = cloudwatch(transforms.server)
    listed = metrics.list_metrics(Namespace=group, MetricName="CPUUtilization")["Metrics"]
    hosts = sorted(d["Value"] for m in listed for d in m["Dimensions"] if d["Name"] == "Host")
    assert [h for h in hosts if h.startswith(f"{name}/")] == sorted(
        n.rsplit("-", 1)[0] for n in names
    )


def test_a_refused_record_fails_the_job_naming_its_object(transforms: Transforms) -> None:
    model = transforms.model()
    prefix = transforms.inputs({"good.csv": lines(4), "poor.csv": "1,2\nbad,3\n4,5\n"})
    name = transforms.create(model, prefix, BatchStrategy="SingleRecord")
    described = transforms.wait(name)
    assert described["TransformJobStatus"] == "Failed"
    reason = described["FailureReason"]
    assert f"s3://batch/{prefix}/poor.csv" in reason, reason
    assert "record 2" in reason and "400" in reason and "cannot sum: bad" in reason, reason
    assert "good.csv" not in reason
    # The object that failed has no output; the other has all of its own.
    assert transforms.output_keys(name) == ["good.csv.out"]
    assert transforms.output(name, "good.csv.out") == sums(4)


def test_a_stopped_job_ends_stopped(transforms: Transforms) -> None:
    model = transforms.model()
    prefix = transforms.inputs({"slow.csv": "1,2\nslow\n"})
    name = transforms.create(model, prefix)
    logs = transforms.server.client("logs")

    def posted() -> bool:
        events = logs.filter_log_events(
            logGroupName="/aws/sagemaker/TransformJobs", logStreamNamePrefix=f"{name}/"
        )
        return any(e["message"].startswith("request of") for e in events["events"])

    wait_until(posted, "the container to get its mini-batch")
    transforms.sagemaker.stop_transform_job(TransformJobName=name)
    assert transforms.sagemaker.describe_transform_job(TransformJobName=name)[
        "TransformJobStatus"
    ] in ("Stopping", "Stopped")
    described = transforms.wait(name)
    assert described["TransformJobStatus"] == "Stopped"
    assert transforms.output_keys(name) == []
    with pytest.raises(ClientError) as again:
        transforms.sagemaker.stop_transform_job(TransformJobName=name)
    assert again.value.response["Error"]["Code"] == "ValidationException"


def test_join_and_filters_as_documented(transforms: Transforms) -> None:
    """SageMaker's documented CSV case: the id column is left out of what the model sees
    (`$[1:]`), the output joined to the input, and the id and prediction kept (`$[0,-1]`)."""
    model = transforms.model()
    prefix = transforms.inputs({"rows.csv": "id1,1,2\nid2,3,4\nid3,5,6\n"})
    name = transforms.create(
        model,
        prefix,
        DataProcessing={"InputFilter": "$[1:]", "JoinSource": "Input", "OutputFilter": "$[0,-1]"},
    )
    described = transforms.wait(name)
    assert described["TransformJobStatus"] == "Completed", described.get("FailureReason")
    assert transforms.output(name, "rows.csv.out") == "id1,3.0\nid2,7.0\nid3,11.0\n"


@pytest.mark.parametrize(
    ("extra", "member"),
    [
        ({"MaxPayloadInMB": 60, "MaxConcurrentTransforms": 2}, "MaxConcurrentTransforms"),
        ({"DataProcessing": {"InputFilter": "features"}}, "DataProcessing.InputFilter"),
        ({"DataProcessing": {"JoinSource": "Input"}, "BatchStrategy": "SingleRecord"}, None),
    ],
)
def test_bad_requests_name_the_member(
    transforms: Transforms, extra: dict[str, Any], member: str | None
) -> None:
    model = transforms.model()
    name = unique_name("tj")
    request: dict[str, Any] = {
        "TransformJobName": name,
        "ModelName": model,
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://batch/x/"}},
        },
        "TransformOutput": {"S3OutputPath": "s3://batch/out"},
        "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": 1},
        **extra,
    }
    with pytest.raises(ClientError) as refused:
        transforms.sagemaker.create_transform_job(**request)
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    assert (member or "DataProcessing.JoinSource") in refused.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as missing:
        transforms.sagemaker.describe_transform_job(TransformJobName=name)
    assert missing.value.response["Error"]["Code"] in ("ValidationException", "ResourceNotFound")


def test_data_capture_writes_manifests_of_the_inputs_and_outputs(transforms: Transforms) -> None:
    model = transforms.model()
    prefix = transforms.inputs({"a.csv": lines(3), "b/c.csv": lines(2, 5)})
    capture = f"s3://batch/capture-{prefix}"
    name = transforms.create(
        model, prefix, DataCaptureConfig={"DestinationS3Uri": capture, "GenerateInferenceId": True}
    )
    described = transforms.wait(name)
    assert described["TransformJobStatus"] == "Completed", described.get("FailureReason")
    assert described["DataCaptureConfig"]["DestinationS3Uri"] == capture
    hour = described["TransformStartTime"].astimezone(UTC).strftime("%Y/%m/%d/%H")
    manifests = {}
    for folder in ("input", "output"):
        key = f"capture-{prefix}/{folder}/{hour}/{name}.jsonl"
        body = transforms.s3.get_object(Bucket="batch", Key=key)["Body"].read()
        manifests[folder] = json.loads(body)
    assert manifests["input"] == [{"prefix": f"s3://batch/{prefix}/"}, "a.csv", "b/c.csv"]
    assert manifests["output"] == [
        {"prefix": f"s3://batch/out-{name}/"},
        "a.csv.out",
        "b/c.csv.out",
    ]
    # A manifest names what a transform job (or Model Monitor) reads back.
    assert transforms.output(name, "b/c.csv.out") == sums(2, 5)
