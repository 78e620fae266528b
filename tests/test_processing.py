"""Processing jobs through boto3 against a real `openmaker server`: inputs (one sharded over two
hosts), outputs landing in S3 (one Continuous), the container's config files, stop, a failing
script, and requests refused with the member named."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.apiserver import ApiServer
from tests.process_helpers import wait_until
from tests.test_endpoint_metrics import cloudwatch

ENDED = ("Completed", "Failed", "Stopped")

# Each host lists what it sees and writes it to its output; the message file is its ExitMessage.
LIST_SCRIPT = """
import json, os
config = json.load(open("/opt/ml/config/resourceconfig.json"))
job = json.load(open("/opt/ml/config/processingjobconfig.json"))
host = config["current_host"]
def files(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder)
                  for d, _, names in os.walk(folder) for f in names)
report = {
    "host": host,
    "hosts": config["hosts"],
    "whole": files("/opt/ml/processing/whole"),
    "shards": files("/opt/ml/processing/shards"),
    "download_mode": job["ProcessingInputs"][0]["S3Input"]["S3DownloadMode"],
    "name": job["ProcessingJobName"],
    "env": os.environ.get("GREETING"),
}
os.makedirs("/opt/ml/processing/out/reports", exist_ok=True)
with open(f"/opt/ml/processing/out/reports/{host}.json", "w") as out:
    json.dump(report, out)
os.symlink("/etc/hostname", "/opt/ml/processing/out/link")
print("processed on", host, flush=True)
with open("/opt/ml/output/message", "w") as message:
    message.write("all good")
"""

FAIL_SCRIPT = """
import sys
with open("/opt/ml/output/message", "w") as message:
    message.write("the input had no rows")
sys.exit(3)
"""

SLOW_SCRIPT = """
import time
with open("/opt/ml/processing/live/early.txt", "w") as early:
    early.write("written first")
print("started", flush=True)
while True:
    time.sleep(0.1)
"""


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def image(tmp_path: Path, script: str) -> tuple[str, list[str]]:
    """A local image folder holding `script`, and the entrypoint that runs it."""
    folder = tmp_path / unique("image")
    folder.mkdir()
    (folder / "process.py").write_text(script)
    return str(folder), ["python3", "/opt/program/process.py"]


def processing_request(
    name: str,
    script_image: tuple[str, list[str]],
    inputs: list[dict[str, Any]] | None = None,
    outputs: list[dict[str, Any]] | None = None,
    count: int = 1,
    **extra: Any,
) -> dict[str, Any]:
    uri, entrypoint = script_image
    request: dict[str, Any] = {
        "ProcessingJobName": name,
        "RoleArn": "arn:aws:iam::123456789012:role/processing",
        "AppSpecification": {"ImageUri": uri, "ContainerEntrypoint": entrypoint},
        "ProcessingResources": {
            "ClusterConfig": {
                "InstanceCount": count,
                "InstanceType": "ml.m5.large",
                "VolumeSizeInGB": 1,
            }
        },
        "ProcessingInputs": inputs or [],
        **extra,
    }
    if outputs:
        request["ProcessingOutputConfig"] = {"Outputs": outputs}
    return request


def s3_input(name: str, uri: str, local: str, **more: str) -> dict[str, Any]:
    source = {"S3Uri": uri, "LocalPath": local, "S3DataType": "S3Prefix", **more}
    return {"InputName": name, "S3Input": source}


def s3_output(name: str, uri: str, local: str, mode: str = "EndOfJob") -> dict[str, Any]:
    return {
        "OutputName": name,
        "S3Output": {"S3Uri": uri, "LocalPath": local, "S3UploadMode": mode},
    }


def wait_ended(sagemaker: Any, name: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        described: dict[str, Any] = sagemaker.describe_processing_job(ProcessingJobName=name)
        if described["ProcessingJobStatus"] in ENDED:
            return described
        assert time.monotonic() < deadline, f"{name} did not end: {described}"
        time.sleep(0.2)


def stop_all(sagemaker: Any, names: list[str]) -> None:
    for name in names:
        try:
            sagemaker.stop_processing_job(ProcessingJobName=name)
        except ClientError as error:  # ended already, or never made
            assert error.response["Error"]["Code"] in ("ValidationException", "ResourceNotFound")
        else:
            wait_ended(sagemaker, name)


def data_bucket(server: ApiServer, prefix: str) -> str:
    """A new bucket holding `whole/table.csv` and four shards `shards/part-N.csv`."""
    name = unique(prefix)
    s3 = server.client("s3")
    s3.create_bucket(Bucket=name)
    s3.put_object(Bucket=name, Key="whole/table.csv", Body=b"a,b\n1,2\n")
    for part in range(4):
        s3.put_object(Bucket=name, Key=f"shards/part-{part}.csv", Body=f"{part}\n".encode())
    return name


@pytest.fixture
def bucket(api_server: ApiServer) -> str:
    return data_bucket(api_server, "proc")


def keys(api_server: ApiServer, bucket: str, prefix: str) -> list[str]:
    listed = api_server.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for item in listed.get("Contents", []))


def test_two_hosts_read_two_inputs_and_write_an_output(
    api_server: ApiServer, tmp_path: Path, bucket: str
) -> None:
    sagemaker = api_server.client("sagemaker")
    name = unique("proc")
    request = processing_request(
        name,
        image(tmp_path, LIST_SCRIPT),
        inputs=[
            s3_input("whole", f"s3://{bucket}/whole", "/opt/ml/processing/whole"),
            s3_input(
                "shards",
                f"s3://{bucket}/shards/",
                "/opt/ml/processing/shards",
                S3DataDistributionType="ShardedByS3Key",
            ),
        ],
        outputs=[s3_output("reports", f"s3://{bucket}/results", "/opt/ml/processing/out")],
        count=2,
        Environment={"GREETING": "hello"},
        Tags=[{"Key": "team", "Value": "data"}],
    )
    try:
        arn = sagemaker.create_processing_job(**request)["ProcessingJobArn"]
        described = wait_ended(sagemaker, name)
    finally:
        stop_all(sagemaker, [name])
    assert described["ProcessingJobStatus"] == "Completed", described.get("FailureReason")
    assert described["ExitMessage"] == "all good"
    assert described["ProcessingEndTime"] >= described["ProcessingStartTime"]
    assert described["ProcessingInputs"] == request["ProcessingInputs"]
    # Links are never uploaded; each host's folder lands under the output's S3Uri.
    expected = ["results/reports/algo-1.json", "results/reports/algo-2.json"]
    # Listed through the S3 endpoint, whose view of the store's folder may lag a moment.
    wait_until(lambda: keys(api_server, bucket, "results/") == expected, "the outputs", 30)
    s3 = api_server.client("s3")
    reports = [
        json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        for key in keys(api_server, bucket, "results/")
    ]
    assert [r["host"] for r in reports] == ["algo-1", "algo-2"]
    assert all(r["hosts"] == ["algo-1", "algo-2"] for r in reports)
    assert all(r["whole"] == ["table.csv"] for r in reports)
    assert all(r["download_mode"] == "StartOfJob" and r["name"] == name for r in reports)
    assert all(r["env"] == "hello" for r in reports)
    shards = [set(r["shards"]) for r in reports]
    assert shards[0] and shards[1] and not shards[0] & shards[1]
    assert shards[0] | shards[1] == {f"part-{part}.csv" for part in range(4)}

    summaries = sagemaker.list_processing_jobs(NameContains=name)["ProcessingJobSummaries"]
    assert [(s["ProcessingJobName"], s["ProcessingJobStatus"]) for s in summaries] == [
        (name, "Completed")
    ]
    assert sagemaker.list_tags(ResourceArn=arn)["Tags"] == [{"Key": "team", "Value": "data"}]
    logs = api_server.client("logs")
    streams = logs.describe_log_streams(
        logGroupName="/aws/sagemaker/ProcessingJobs", logStreamNamePrefix=f"{name}/"
    )["logStreams"]
    assert sorted(s["logStreamName"].rsplit("-", 1)[0] for s in streams) == [
        f"{name}/algo-1",
        f"{name}/algo-2",
    ]
    events = logs.get_log_events(
        logGroupName="/aws/sagemaker/ProcessingJobs",
        logStreamName=streams[0]["logStreamName"],
        startFromHead=True,
    )["events"]
    assert any(e["message"].startswith("processed on algo-") for e in events)

    # Each host's utilization, as SageMaker names its host: `<job>/algo-N`.
    metrics = cloudwatch(api_server)

    def hosts_measured() -> list[str]:
        listed = metrics.list_metrics(
            Namespace="/aws/sagemaker/ProcessingJobs", MetricName="MemoryUtilization"
        )["Metrics"]
        return sorted(d["Value"] for m in listed for d in m["Dimensions"] if d["Name"] == "Host")

    hosts = [f"{name}/algo-1", f"{name}/algo-2"]
    wait_until(lambda: [h for h in hosts_measured() if h.startswith(f"{name}/")] == hosts,
               "the hosts' utilization")  # fmt: skip


def test_a_failing_script_fails_the_job_with_its_message(
    api_server: ApiServer, tmp_path: Path
) -> None:
    sagemaker = api_server.client("sagemaker")
    name = unique("fail")
    try:
        sagemaker.create_processing_job(**processing_request(name, image(tmp_path, FAIL_SCRIPT)))
        described = wait_ended(sagemaker, name)
    finally:
        stop_all(sagemaker, [name])
    assert described["ProcessingJobStatus"] == "Failed"
    assert described["FailureReason"] == "AlgorithmError: the input had no rows"
    assert described["ExitMessage"] == "the input had no rows"


def test_stop_ends_the_job_stopped_after_a_continuous_upload(
    api_server: ApiServer, tmp_path: Path, bucket: str
) -> None:
    sagemaker = api_server.client("sagemaker")
    name = unique("stop")
    output = s3_output("live", f"s3://{bucket}/live", "/opt/ml/processing/live", "Continuous")
    request = processing_request(name, image(tmp_path, SLOW_SCRIPT), outputs=[output])
    try:
        sagemaker.create_processing_job(**request)
        # Continuous: the file is in S3 while the code still runs.
        deadline = time.monotonic() + 60
        while keys(api_server, bucket, "live/") != ["live/early.txt"]:
            assert time.monotonic() < deadline, "the Continuous output never reached S3"
            time.sleep(0.2)
        assert (
            sagemaker.describe_processing_job(ProcessingJobName=name)["ProcessingJobStatus"]
            == "InProgress"
        )
        sagemaker.stop_processing_job(ProcessingJobName=name)
        described = wait_ended(sagemaker, name)
    finally:
        stop_all(sagemaker, [name])
    assert described["ProcessingJobStatus"] == "Stopped"
    with pytest.raises(ClientError) as again:
        sagemaker.stop_processing_job(ProcessingJobName=name)
    assert again.value.response["Error"]["Code"] == "ValidationException"


@pytest.mark.parametrize(
    ("change", "member"),
    [
        (
            lambda r: r["ProcessingInputs"][0]["S3Input"].update(LocalPath="/opt/ml/input/x"),
            "ProcessingInputs.1.member.S3Input.LocalPath",
        ),
        (
            lambda r: r["ProcessingInputs"].append(dict(r["ProcessingInputs"][0])),
            "ProcessingInputs.2.member.InputName",
        ),
        (
            lambda r: r["ProcessingInputs"][0]["S3Input"].update(S3CompressionType="Gzip"),
            "ProcessingInputs.1.member.S3Input.S3CompressionType",
        ),
        (
            lambda r: r["ProcessingOutputConfig"]["Outputs"][0]["S3Output"].update(
                LocalPath="/opt/ml/processing/../../etc"
            ),
            "ProcessingOutputConfig.Outputs.1.member.S3Output.LocalPath",
        ),
        (
            lambda r: r["AppSpecification"].pop("ContainerEntrypoint"),
            "AppSpecification.ContainerEntrypoint",
        ),
        (
            lambda r: r["AppSpecification"].update(ImageUri="example.com/Some Image:1"),
            "AppSpecification.ImageUri",
        ),
    ],
)
def test_bad_requests_name_the_member(
    api_server: ApiServer, tmp_path: Path, change: Any, member: str
) -> None:
    sagemaker = api_server.client("sagemaker")
    name = unique("bad")
    request = processing_request(
        name,
        image(tmp_path, FAIL_SCRIPT),
        inputs=[s3_input("in", "s3://b/in", "/opt/ml/processing/in")],
        outputs=[s3_output("out", "s3://b/out", "/opt/ml/processing/out")],
    )
    change(request)
    with pytest.raises(ClientError) as refused:
        sagemaker.create_processing_job(**request)
    error = refused.value.response["Error"]
    assert error["Code"] == "ValidationException"
    assert f"at '{member}'" in error["Message"]
    with pytest.raises(ClientError) as missing:
        sagemaker.describe_processing_job(ProcessingJobName=name)
    assert missing.value.response["Error"]["Code"] == "ResourceNotFound"
