"""The SageMaker and CloudWatch Logs APIs on the wire, through boto3 and raw signed requests."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, WaiterError

from openmaker.jobs.logs import LOG_GROUP
from openmaker.shapes.validate import validate_output
from tests.apiserver import (
    ApiServer,
    openmaker_command,
    raw_post,
    running_api_server,
    signed_post,
    stop_all,
)
from tests.helpers import make_image, request
from tests.s3server import served_bytes

NO_RETRIES = Config(retries={"max_attempts": 1, "mode": "standard"})


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def image(tmp_path: Path, script: str) -> str:
    return str(make_image(tmp_path / unique("image"), script))


def bucket(server: ApiServer) -> str:
    name = unique("bkt")
    server.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def output(api_server: ApiServer) -> str:
    """An S3OutputPath in a bucket that exists."""
    return f"s3://{bucket(api_server)}/out"


def wait_done(sagemaker: Any, name: str) -> dict[str, Any]:
    waiter = sagemaker.get_waiter("training_job_completed_or_stopped")
    # The waiter raises on Failed: the description then says why.
    with contextlib.suppress(WaiterError):
        waiter.wait(TrainingJobName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    return sagemaker.describe_training_job(TrainingJobName=name)


def check_output(operation: str, response: dict[str, Any], service: str = "sagemaker") -> None:
    body = {k: v for k, v in response.items() if k != "ResponseMetadata"}
    assert validate_output(operation, body, service) == []


def test_a_job_through_boto3_from_create_to_logs_and_metrics(
    api_server: ApiServer, tmp_path: Path
) -> None:
    sagemaker, logs = api_server.client("sagemaker"), api_server.client("logs")
    name = unique("boto")
    script = (
        "#!/bin/sh\n"
        + "".join(f'echo "step {i} loss={1 / (i + 1):.4f}"\n' for i in range(30))
        + "echo weights > /opt/ml/model/w.txt\n"
    )
    body = request(name, image(tmp_path, script), f"s3://{bucket(api_server)}/out")
    body["AlgorithmSpecification"]["MetricDefinitions"] = [
        {"Name": "train:loss", "Regex": r"loss=([0-9.]+)"},
        {"Name": "train:step", "Regex": r"step (\d+)"},
    ]
    body["Tags"] = [{"Key": "team", "Value": "vision"}]
    created = sagemaker.create_training_job(**body)
    check_output("CreateTrainingJob", created)

    described = wait_done(sagemaker, name)
    check_output("DescribeTrainingJob", described)
    assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")
    metrics = {m["MetricName"]: m["Value"] for m in described["FinalMetricDataList"]}
    assert metrics == {"train:loss": pytest.approx(1 / 30, abs=1e-4), "train:step": 29}

    model = described["ModelArtifacts"]["S3ModelArtifacts"]
    assert model == f"{body['OutputDataConfig']['S3OutputPath']}/{name}/output/model.tar.gz"
    s3_bucket, key = model.removeprefix("s3://").split("/", 1)
    assert api_server.client("s3").head_object(Bucket=s3_bucket, Key=key)["ContentLength"] > 0

    streams = logs.describe_log_streams(logGroupName=LOG_GROUP, logStreamNamePrefix=f"{name}/")
    check_output("DescribeLogStreams", streams, "logs")
    [stream] = streams["logStreams"]
    assert stream["logStreamName"].startswith(f"{name}/algo-1-")
    # Read back line by line, two at a time, the way a poller follows a stream.
    lines, token = [], None
    while True:
        extra: dict[str, str] = {"nextToken": token} if token else {}
        page = logs.get_log_events(
            logGroupName=LOG_GROUP,
            logStreamName=stream["logStreamName"],
            startFromHead=True,
            limit=2,
            **extra,
        )
        check_output("GetLogEvents", page, "logs")
        lines += [e["message"] for e in page["events"]]
        if page["nextForwardToken"] == token:
            break
        token = page["nextForwardToken"]
    assert lines == [f"step {i} loss={1 / (i + 1):.4f}" for i in range(30)]

    tags = sagemaker.list_tags(ResourceArn=created["TrainingJobArn"])
    assert tags["Tags"] == [{"Key": "team", "Value": "vision"}]


def test_log_events_backwards_and_filtered(
    api_server: ApiServer, tmp_path: Path, output: str
) -> None:
    sagemaker, logs = api_server.client("sagemaker"), api_server.client("logs")
    name = unique("logs")
    script = '#!/bin/sh\nfor i in 1 2 3 4 5 6 7 8 9 10; do echo "line $i"; done\necho ERROR x\n'
    sagemaker.create_training_job(**request(name, image(tmp_path, script), output))
    wait_done(sagemaker, name)
    stream = logs.describe_log_streams(logGroupName=LOG_GROUP, logStreamNamePrefix=f"{name}/")[
        "logStreams"
    ][0]["logStreamName"]
    # Without a token and not from the head: the newest events, then older ones going back.
    last = logs.get_log_events(logGroupName=LOG_GROUP, logStreamName=stream, limit=3)
    assert [e["message"] for e in last["events"]] == ["line 9", "line 10", "ERROR x"]
    before = logs.get_log_events(
        logGroupName=LOG_GROUP, logStreamName=stream, limit=3, nextToken=last["nextBackwardToken"]
    )
    assert [e["message"] for e in before["events"]] == ["line 6", "line 7", "line 8"]

    found = logs.filter_log_events(
        logGroupName=LOG_GROUP, logStreamNamePrefix=f"{name}/", filterPattern="ERROR"
    )
    check_output("FilterLogEvents", found, "logs")
    assert [e["message"] for e in found["events"]] == ["ERROR x"]
    paged = logs.get_paginator("filter_log_events").paginate(
        logGroupName=LOG_GROUP,
        logStreamNames=[stream],
        filterPattern='"line 1"',
        PaginationConfig={"PageSize": 1},
    )
    assert [e["message"] for p in paged for e in p["events"]] == ["line 1", "line 10"]

    with pytest.raises(ClientError) as missing:
        logs.get_log_events(logGroupName=LOG_GROUP, logStreamName=f"{name}/algo-9-1")
    assert missing.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_list_filters_sorts_and_pages(api_server: ApiServer, tmp_path: Path, output: str) -> None:
    sagemaker = api_server.client("sagemaker")
    tag = uuid.uuid4().hex[:6]
    names = [f"list-{tag}-{i}" for i in range(5)]
    script = image(tmp_path, "#!/bin/sh\nexit 0\n")
    for name in names:
        sagemaker.create_training_job(**request(name, script, output))
    for name in names:
        wait_done(sagemaker, name)

    pages = list(
        sagemaker.get_paginator("list_training_jobs").paginate(
            NameContains=tag.upper(), PaginationConfig={"PageSize": 2}
        )
    )
    assert len(pages) == 3
    for page in pages:
        check_output("ListTrainingJobs", page)
    listed = [s["TrainingJobName"] for p in pages for s in p["TrainingJobSummaries"]]
    assert listed == names  # creation order, ascending by default, each once

    newest_first = sagemaker.list_training_jobs(
        NameContains=tag, SortBy="Name", SortOrder="Descending", MaxResults=100
    )
    assert [s["TrainingJobName"] for s in newest_first["TrainingJobSummaries"]] == names[::-1]

    failed = sagemaker.list_training_jobs(NameContains=tag, StatusEquals="Failed")
    assert failed["TrainingJobSummaries"] == []
    third = sagemaker.describe_training_job(TrainingJobName=names[2])["CreationTime"]
    later = sagemaker.list_training_jobs(NameContains=tag, CreationTimeAfter=third)
    assert [s["TrainingJobName"] for s in later["TrainingJobSummaries"]] == names[3:]

    with pytest.raises(ClientError) as bad:
        sagemaker.list_training_jobs(NextToken="not-a-token")
    assert bad.value.response["Error"]["Code"] == "ValidationException"


def test_concurrent_jobs_upload_through_the_embedded_endpoint(
    api_server: ApiServer, tmp_path: Path
) -> None:
    """Eight jobs whose code writes and lists objects through the S3 endpoint at once, each
    with its own job key (rclone with an uncached folder listing once deadlocked on this)."""
    sagemaker, s3 = api_server.client("sagemaker"), api_server.client("s3")
    data_bucket = bucket(api_server)
    script = image(
        tmp_path,
        f"""#!{sys.executable}
import os, boto3
assert os.environ["AWS_ACCESS_KEY_ID"].startswith("OMJ")  # the job's key, not the server's
name = os.environ["TRAINING_JOB_NAME"]
s3 = boto3.client("s3")  # configured by the job's environment alone: the endpoint
for part in range(3):
    body = f"{{name}} part {{part}}".encode() * 1000
    s3.put_object(Bucket="{data_bucket}", Key=f"out/{{name}}/code/part-{{part}}", Body=body)
listed = s3.list_objects_v2(Bucket="{data_bucket}", Prefix=f"out/{{name}}/code/")
assert [o["Key"].rsplit("/", 1)[1] for o in listed["Contents"]] == ["part-0", "part-1", "part-2"]
""",
    )
    names = [unique("many") for _ in range(8)]
    try:
        for name in names:
            sagemaker.create_training_job(**request(name, script, f"s3://{data_bucket}/out"))
        for name in names:
            described = wait_done(sagemaker, name)
            assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")
            for part in range(3):
                key = f"out/{name}/code/part-{part}"
                written = s3.get_object(Bucket=data_bucket, Key=key)["Body"].read()
                assert written == f"{name} part {part}".encode() * 1000
    finally:
        stop_all(sagemaker, names)


def api_log_text(server: ApiServer, name: str) -> str:
    """The job's log lines so far, read through the CloudWatch Logs API."""
    found = server.client("logs").filter_log_events(
        logGroupName=LOG_GROUP, logStreamNamePrefix=f"{name}/"
    )
    return "\n".join(e["message"] for e in found["events"])


def wait_for_api_log(server: ApiServer, name: str, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in api_log_text(server, name):
        assert time.monotonic() < deadline, f"{text!r} never appeared in the logs of {name}"
        time.sleep(0.1)


def test_stop_through_the_api(api_server: ApiServer, tmp_path: Path, output: str) -> None:
    sagemaker = api_server.client("sagemaker")
    name = unique("stop")
    # The EXIT trap runs only when the shell ends by its own `exit`, never under SIGKILL (the
    # server's grace is 3 s: a SIGKILL would end the job as Stopped too).
    script = (
        "#!/bin/sh\ntrap 'echo got TERM; echo saved > /opt/ml/model/m; exit 0' TERM\n"
        "trap 'echo ended by its own exit' EXIT\n"
        "echo started\nwhile true; do sleep 0.1; done\n"
    )
    try:
        sagemaker.create_training_job(**request(name, image(tmp_path, script), output))
        wait_for_api_log(api_server, name, "started")  # the trap is set by then
        sagemaker.stop_training_job(TrainingJobName=name)
        described = wait_done(sagemaker, name)
    finally:
        stop_all(sagemaker, [name])
    assert described["TrainingJobStatus"] == "Stopped"
    steps = [t["Status"] for t in described["SecondaryStatusTransitions"]]
    assert steps[-2:] == ["Stopping", "Stopped"]
    assert api_log_text(api_server, name).splitlines()[-2:] == ["got TERM", "ended by its own exit"]
    with pytest.raises(ClientError) as again:
        sagemaker.stop_training_job(TrainingJobName=name)
    assert again.value.response["Error"]["Code"] == "ValidationException"


def test_tags(api_server: ApiServer, tmp_path: Path, output: str) -> None:
    sagemaker = api_server.client("sagemaker")
    name = unique("tags")
    arn = sagemaker.create_training_job(**request(name, image(tmp_path, "#!/bin/sh\n"), output))[
        "TrainingJobArn"
    ]
    added = sagemaker.add_tags(
        ResourceArn=arn, Tags=[{"Key": f"k{i:02d}", "Value": str(i)} for i in range(7)]
    )
    check_output("AddTags", added)
    sagemaker.delete_tags(ResourceArn=arn, TagKeys=["k03"])
    # 50 is both the smallest page and the most tags a resource may have: one page.
    listed = sagemaker.list_tags(ResourceArn=arn, MaxResults=50)
    check_output("ListTags", listed)
    keys = [t["Key"] for t in listed["Tags"]]
    assert keys == ["k00", "k01", "k02", "k04", "k05", "k06"]
    with pytest.raises(ClientError) as reserved:
        sagemaker.add_tags(ResourceArn=arn, Tags=[{"Key": "aws:x", "Value": "1"}])
    assert reserved.value.response["Error"]["Code"] == "ValidationException"
    with pytest.raises(ClientError) as unknown:
        sagemaker.list_tags(ResourceArn=arn.replace(name, "nothing-here"))
    assert unknown.value.response["Error"]["Code"] == "ResourceNotFound"


def test_errors_carry_the_aws_codes(api_server: ApiServer, tmp_path: Path, output: str) -> None:
    sagemaker = api_server.client("sagemaker", config=NO_RETRIES)
    body = request(unique("dup"), image(tmp_path, "#!/bin/sh\n"), output)
    sagemaker.create_training_job(**body)

    def code_of(call: Any, **kwargs: Any) -> tuple[str, str, int]:
        with pytest.raises(ClientError) as caught:
            call(**kwargs)
        error = caught.value.response
        return (
            error["Error"]["Code"],
            error["Error"]["Message"],
            error["ResponseMetadata"]["HTTPStatusCode"],
        )

    code, _, status = code_of(sagemaker.create_training_job, **body)
    assert (code, status) == ("ResourceInUse", 400)
    code, message, _ = code_of(sagemaker.describe_training_job, TrainingJobName="no-such-job")
    assert code == "ResourceNotFound" and "no-such-job" in message
    bad = dict(body, TrainingJobName="bad_name!")
    code, message, _ = code_of(sagemaker.create_training_job, **bad)
    assert code == "ValidationException" and "trainingJobName" in message.replace("T", "t", 1)
    code, _, _ = code_of(sagemaker.list_inference_components)
    assert code == "UnknownOperationException"

    status_code, answer = signed_post(api_server, "SageMaker.NoSuchThing", b"{}")
    assert (status_code, answer["__type"]) == (400, "UnknownOperationException")
    status_code, answer = signed_post(api_server, "SageMaker.DescribeTrainingJob", b"{not json")
    assert (status_code, answer["__type"]) == (400, "SerializationException")
    status_code, answer = signed_post(
        api_server, "SageMaker.ListTrainingJobs", json.dumps({"MaxResults": "ten"}).encode()
    )
    assert (status_code, answer["__type"]) == (400, "ValidationException")
    assert "MaxResults" in answer["message"]


def test_throttling_and_resource_limits(tmp_path: Path) -> None:
    """A server of its own: a short database wait, and a strict two-CPU machine."""
    env = {
        "OPENMAKER_DB_BUSY_SECONDS": "0.5",
        "OPENMAKER_CAPACITY": "strict",
        "OPENMAKER_CPUS": "2",
    }
    with running_api_server(tmp_path / "home", **env) as server:
        sagemaker = server.client("sagemaker", config=NO_RETRIES)
        body = request(unique("busy"), image(tmp_path, "#!/bin/sh\n"), "s3://bkt/out")
        holder = sqlite3.connect(server.home / "openmaker.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            with pytest.raises(ClientError) as caught:
                sagemaker.create_training_job(**body)
            assert caught.value.response["Error"]["Code"] == "ThrottlingException"
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        # Once the lock is gone, the same request (which left nothing behind) goes through.
        sagemaker.create_training_job(**body)

        too_big = dict(body, TrainingJobName=unique("big"))
        too_big["ResourceConfig"] = dict(body["ResourceConfig"], InstanceType="ml.m5.4xlarge")
        with pytest.raises(ClientError) as caught:
            sagemaker.create_training_job(**too_big)
        error = caught.value.response["Error"]
        assert error["Code"] == "ResourceLimitExceeded"
        assert "ml.m5.4xlarge" in error["Message"]


def test_signatures_are_checked_before_anything_happens(
    api_server: ApiServer, tmp_path: Path, output: str
) -> None:
    name = unique("auth")
    body = json.dumps(request(name, image(tmp_path, "#!/bin/sh\n"), output)).encode()
    target = "SageMaker.CreateTrainingJob"
    url = api_server.env["AWS_ENDPOINT_URL_SAGEMAKER"] + "/"

    status, answer = raw_post(
        url, body, {"X-Amz-Target": target, "Content-Type": "application/x-amz-json-1.1"}
    )
    assert (status, answer["__type"]) == (403, "MissingAuthenticationTokenException")

    wrong_key = api_server.client("sagemaker", aws_access_key_id="AKIAWRONGWRONGWRONG0")
    with pytest.raises(ClientError) as caught:
        wrong_key.describe_training_job(TrainingJobName=name)
    assert caught.value.response["Error"]["Code"] == "UnrecognizedClientException"

    wrong_secret = api_server.client("sagemaker", aws_secret_access_key="x" * 40, config=NO_RETRIES)
    with pytest.raises(ClientError) as caught:
        wrong_secret.create_training_job(**json.loads(body))
    assert caught.value.response["Error"]["Code"] == "InvalidSignatureException"

    # A body changed after signing: the signature no longer matches it.
    status, answer = signed_post(api_server, target, body, send=body.replace(b"600", b"999"))
    assert (status, answer["__type"]) == (400, "InvalidSignatureException")
    # A signature made long ago (a replayed request) has expired.
    status, answer = signed_post(api_server, target, body, at="20200101T000000Z")
    assert (status, answer["__type"]) == (400, "InvalidSignatureException")
    assert "expired" in answer["message"]

    sagemaker = api_server.client("sagemaker")
    with pytest.raises(ClientError) as caught:
        sagemaker.describe_training_job(TrainingJobName=name)
    assert caught.value.response["Error"]["Code"] == "ResourceNotFound"  # nothing was created


def test_server_jobs_use_the_store_folder_and_their_code_the_endpoint(
    api_server: ApiServer, tmp_path: Path
) -> None:
    """openmaker's own transfers for a server's job bypass the embedded S3 endpoint; the code
    gets the endpoint; the job's artifacts are there through the endpoint once it has ended."""
    s3, sagemaker = api_server.client("s3"), api_server.client("sagemaker")
    name, data_bucket = unique("direct"), bucket(api_server)
    size = 16 * 1024 * 1024
    s3.put_object(Bucket=data_bucket, Key="train/data.bin", Body=os.urandom(size))
    s3.put_object(Bucket=data_bucket, Key="small/note.txt", Body=b"through the endpoint")
    script = (
        "#!"
        + sys.executable
        + f"""
import os, boto3
assert os.path.getsize("/opt/ml/input/data/train/data.bin") == {size}
s3 = boto3.client("s3")  # configured by the job's environment alone
note = s3.get_object(Bucket="{data_bucket}", Key="small/note.txt")["Body"].read()
open("/opt/ml/model/note.txt", "wb").write(note)
open("/opt/ml/model/weights.bin", "wb").write(os.urandom({size}))
"""
    )
    body = request(
        name, image(tmp_path, script), f"s3://{data_bucket}/out",
        # The code's key reaches only the places its request names.
        {"train": f"s3://{data_bucket}/train/", "notes": f"s3://{data_bucket}/small/"},
    )  # fmt: skip
    before = served_bytes(api_server.home / "s3")
    sagemaker.create_training_job(**body)
    description = wait_done(sagemaker, name)
    served = served_bytes(api_server.home / "s3") - before
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    # Neither the 16 MiB download nor the 16 MiB model's upload went through the endpoint.
    assert served < 2 * 1024 * 1024, served
    key = description["ModelArtifacts"]["S3ModelArtifacts"].split("/", 3)[3]
    archive = s3.get_object(Bucket=data_bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        note = tar.extractfile("note.txt")
        assert note is not None and note.read() == b"through the endpoint"


def zombie_children(pid: int) -> list[int]:
    zombies = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] == "Z" and int(fields[1]) == pid:
            zombies.append(int(entry.name))
    return zombies


def test_the_server_collects_the_workers_of_ended_jobs(
    api_server: ApiServer, tmp_path: Path, output: str
) -> None:
    sagemaker = api_server.client("sagemaker")
    name = unique("reaped")
    sagemaker.create_training_job(**request(name, image(tmp_path, "#!/bin/sh\n"), output))
    assert wait_done(sagemaker, name)["TrainingJobStatus"] == "Completed"
    # The server's sweep (every 5 s) collects them; nothing else starts a process meanwhile.
    deadline = time.monotonic() + 15
    while zombie_children(api_server.process.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert zombie_children(api_server.process.pid) == []


def test_env_for_a_server_given_its_key_pair_in_the_environment(tmp_path: Path) -> None:
    key, secret = "OMKCONFIGUREDKEY0001", "configured-secret-" + uuid.uuid4().hex
    keys = {"OPENMAKER_ACCESS_KEY_ID": key, "OPENMAKER_SECRET_ACCESS_KEY": secret}
    home = tmp_path / "home"
    # The helper reads `openmaker env` with the server's own variables: the pair comes back.
    with running_api_server(home, **keys) as server:
        pair = (server.env["AWS_ACCESS_KEY_ID"], server.env["AWS_SECRET_ACCESS_KEY"])
        assert pair == (key, secret)
        server.client("sagemaker").list_training_jobs()
        # Without them `env` cannot know the pair: it says so, and makes no pair of its own.
        bare = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OPENMAKER_"))}
        answer = subprocess.run(
            [*openmaker_command(), "env"], env={**bare, "OPENMAKER_HOME": str(home)},
            capture_output=True, text=True,
        )  # fmt: skip
    assert answer.returncode == 1 and answer.stdout == ""
    assert key in answer.stderr and "OPENMAKER_ACCESS_KEY_ID" in answer.stderr
    assert not (home / "credentials.json").exists()
