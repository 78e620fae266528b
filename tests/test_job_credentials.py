"""A server's job holds a key of its own, good only for the places its request names and only
while it runs; no local user finds a secret on a command line or in a readable file.

Each test makes the attack from inside a real job of a real `openmaker server` (its code using
its own environment), or as the unprivileged user `nobody` reading /proc.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.apiserver import ApiServer, running_api_server
from tests.helpers import make_image, request
from tests.process_helpers import wait_until
from tests.s3server import S3Server

NO_RETRIES = Config(retries={"max_attempts": 1, "mode": "standard"})


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def run_job(server: ApiServer, tmp_path: Path, code: str, **body: Any) -> dict[str, Any]:
    """Run `code` (Python) as a job's program; returns its description once it has ended."""
    sagemaker = server.client("sagemaker")
    name = body.pop("TrainingJobName")
    program = make_image(tmp_path / unique("image"), f"#!{sys.executable}\n{code}")
    output = body.pop("output")
    sagemaker.create_training_job(**request(name, str(program), output, **body))
    return wait_ended(sagemaker, name)


def wait_ended(sagemaker: Any, name: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        described = sagemaker.describe_training_job(TrainingJobName=name)
        if described["TrainingJobStatus"] in ("Completed", "Failed", "Stopped"):
            return described
        assert time.monotonic() < deadline, f"{name} did not end"
        time.sleep(0.3)


def model_file(server: ApiServer | S3Server, described: dict[str, Any], member: str) -> bytes:
    bucket, key = described["ModelArtifacts"]["S3ModelArtifacts"][5:].split("/", 1)
    s3 = server.client() if isinstance(server, S3Server) else server.client("s3")
    archive = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        extracted = tar.extractfile(member)
        assert extracted is not None
        return extracted.read()


def assert_cannot_sign(server: ApiServer, key: list[str], name: str) -> None:
    """The job's key pair signs nothing of the control plane (tried from outside the job)."""
    sagemaker = server.client(
        "sagemaker", aws_access_key_id=key[0], aws_secret_access_key=key[1], config=NO_RETRIES
    )
    with pytest.raises(ClientError) as refused:
        sagemaker.describe_training_job(TrainingJobName=name)
    assert refused.value.response["Error"]["Code"] == "UnrecognizedClientException"


def s3_as(server: ApiServer, key_id: str, secret: str) -> Any:
    return boto3.client(
        "s3", endpoint_url=server.env["AWS_ENDPOINT_URL_S3"], region_name="us-east-1",
        aws_access_key_id=key_id, aws_secret_access_key=secret, config=NO_RETRIES,
    )  # fmt: skip


# The job's code: each attempt's outcome ("ok" or the error code) and its own key, in its model.
ATTEMPTS = """
import json, os, boto3
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError
NO_RETRIES = Config(retries={"max_attempts": 1, "mode": "standard"})
results = {}
def attempt(label, call):
    try:
        call()
        results[label] = "ok"
    except ClientError as error:
        results[label] = error.response["Error"]["Code"]
    except EndpointConnectionError:
        results[label] = "unreachable"
def finish():
    results["key"] = [os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")]
    with open("/opt/ml/model/results.json", "w") as handle:
        json.dump(results, handle)
"""


def test_the_jobs_environment_cannot_sign_the_control_plane(
    api_server: ApiServer, tmp_path: Path
) -> None:
    """The code signs DescribeTrainingJob and CreateTrainingJob (a nested job with a file://
    checkpoint, as an attacker would) with the credentials its environment holds."""
    s3 = api_server.client("s3")
    bucket = unique("cp")
    s3.create_bucket(Bucket=bucket)
    name, nested = unique("signer"), unique("nested")
    nested_request = request(nested, "/bin/true", f"s3://{bucket}/out")
    nested_request["CheckpointConfig"] = {"S3Uri": f"file://{tmp_path}/planted"}
    code = (
        ATTEMPTS
        + f"""
sagemaker = boto3.client("sagemaker", endpoint_url={api_server.env["AWS_ENDPOINT_URL_SAGEMAKER"]!r},
                         config=NO_RETRIES)
attempt("describe", lambda: sagemaker.describe_training_job(TrainingJobName={name!r}))
attempt("create", lambda: sagemaker.create_training_job(**{nested_request!r}))
finish()
"""
    )
    described = run_job(api_server, tmp_path, code, TrainingJobName=name,
                        output=f"s3://{bucket}/out")  # fmt: skip
    assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")
    results = json.loads(model_file(api_server, described, "results.json"))
    # The job's own network does not reach the API; nor does its key sign it from anywhere.
    assert results["describe"] == results["create"] == "unreachable"
    assert_cannot_sign(api_server, results["key"], name)
    assert api_server.env["AWS_ACCESS_KEY_ID"] not in results["key"]
    assert api_server.env["AWS_SECRET_ACCESS_KEY"] not in results["key"]
    with pytest.raises(ClientError):
        api_server.client("sagemaker").describe_training_job(TrainingJobName=nested)
    assert not (tmp_path / "planted").exists()


def test_the_jobs_key_reaches_only_its_places_and_dies_with_it(
    api_server: ApiServer, tmp_path: Path
) -> None:
    s3 = api_server.client("s3")
    data, victim, other = unique("data"), unique("victim"), unique("other")
    for bucket in (data, victim, other):
        s3.create_bucket(Bucket=bucket)
    victim_key = "out/earlier-job/output/model.tar.gz"
    s3.put_object(Bucket=victim, Key=victim_key, Body=b"the victim's model")
    s3.put_object(Bucket=other, Key="private.txt", Body=b"not yours")
    s3.put_object(Bucket=data, Key="train/part-0", Body=b"training data")
    # A sibling the channel's S3 prefix `train/` does not match: not the job's.
    s3.put_object(Bucket=data, Key="train-old/part-0", Body=b"another channel")
    name = unique("scoped")
    code = (
        ATTEMPTS
        + f"""
s3 = boto3.client("s3", config=NO_RETRIES)  # configured by the job's environment alone
attempt("overwrite victim", lambda: s3.put_object(
    Bucket={victim!r}, Key={victim_key!r}, Body=b"overwritten"))
attempt("read other", lambda: s3.get_object(Bucket={other!r}, Key="private.txt"))
attempt("read sibling", lambda: s3.get_object(Bucket={data!r}, Key="train-old/part-0"))
attempt("write channel", lambda: s3.put_object(Bucket={data!r}, Key="train/x", Body=b"x"))
attempt("write beside output", lambda: s3.put_object(
    Bucket={data!r}, Key="out/another-job/x", Body=b"x"))
results["buckets"] = sorted(b["Name"] for b in s3.list_buckets()["Buckets"])
results["channel"] = s3.get_object(Bucket={data!r}, Key="train/part-0")["Body"].read().decode()
attempt("write output", lambda: s3.put_object(
    Bucket={data!r}, Key="out/{name}/extra.txt", Body=b"mine"))
attempt("write checkpoint", lambda: s3.put_object(
    Bucket={data!r}, Key="checkpoints/{name}/step-1", Body=b"state"))
finish()
"""
    )
    described = run_job(
        api_server, tmp_path, code, TrainingJobName=name, output=f"s3://{data}/out",
        channels={"train": f"s3://{data}/train/"},
        CheckpointConfig={"S3Uri": f"s3://{data}/checkpoints/{name}"},
    )  # fmt: skip
    assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")
    results = json.loads(model_file(api_server, described, "results.json"))
    # Outside its places: refused, as an execution role's policy refuses.
    for label in ("overwrite victim", "read other", "read sibling", "write channel",
                  "write beside output"):  # fmt: skip
        assert results[label] == "AccessDenied", (label, results[label])
    assert s3.get_object(Bucket=victim, Key=victim_key)["Body"].read() == b"the victim's model"
    assert results["buckets"] == [data]
    # Inside them: as on SageMaker with a role that allows them.
    assert results["channel"] == "training data"
    assert results["write output"] == "ok" and results["write checkpoint"] == "ok"
    assert s3.get_object(Bucket=data, Key=f"out/{name}/extra.txt")["Body"].read() == b"mine"

    # The job has ended: its key opens nothing any more.
    job = s3_as(api_server, *results["key"])
    with pytest.raises(ClientError):
        job.get_object(Bucket=data, Key="train/part-0")
    with pytest.raises(ClientError):
        job.put_object(Bucket=data, Key=f"out/{name}/late.txt", Body=b"late")
    # Folder listings are cached for a second: after that, nothing is listed either.
    wait_until(lambda: listed(job, data) == [], "the ended job's listings to empty")
    assert listed(s3, data, f"out/{name}/late") == []


def test_writes_after_the_code_empties_its_output_stay_in_the_store(
    api_server: ApiServer, tmp_path: Path
) -> None:
    """Checkpoint rotation: the code deletes its only object, then writes the next. rclone
    removes a folder it has emptied; the job's place must not go with it (its next write
    landed in openmaker's own folder, lost, and revoking the key then failed)."""
    s3 = api_server.client("s3")
    bucket, name = unique("rotate"), unique("rotate")
    s3.create_bucket(Bucket=bucket)
    code = f"""
import boto3
s3 = boto3.client("s3")
for step in range(3):
    s3.put_object(Bucket={bucket!r}, Key="checkpoints/{name}/step", Body=str(step).encode())
    if step < 2:
        s3.delete_object(Bucket={bucket!r}, Key="checkpoints/{name}/step")
open("/opt/ml/model/done", "w").write("done")
"""
    described = run_job(
        api_server, tmp_path, code, TrainingJobName=name, output=f"s3://{bucket}/out",
        CheckpointConfig={"S3Uri": f"s3://{bucket}/checkpoints/{name}"},
    )  # fmt: skip
    assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")
    body = s3.get_object(Bucket=bucket, Key=f"checkpoints/{name}/step")["Body"].read()
    assert body == b"2"
    assert not list((api_server.home / "gate" / "views").glob(".OMJ*.d"))  # all revoked


def listed(s3: Any, bucket: str, prefix: str = "") -> list[str]:
    try:
        page = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    except ClientError:
        return []
    return [o["Key"] for o in page.get("Contents", [])]


# Run as `nobody`: everything that user can read of other processes' command lines and
# environments, and of the files under openmaker's home.
SCAN = """
import os, sys
found = []
for pid in os.listdir("/proc"):
    if pid.isdigit():
        for part in ("cmdline", "environ"):
            try:
                found.append(open(f"/proc/{pid}/{part}", "rb").read())
            except OSError:
                pass
for folder, _, files in os.walk(sys.argv[1]):
    for file in files:
        try:
            found.append(open(os.path.join(folder, file), "rb").read())
        except OSError:
            pass
sys.stdout.buffer.write(b"\\n".join(found))
"""


@pytest.fixture
def open_server(tmp_path: Path) -> Iterator[ApiServer]:
    """A server whose home any user may walk into (pytest's own folders are its owner's only):
    what `nobody` finds there is then what the files' own modes let through."""
    base = Path(tempfile.mkdtemp(prefix="openmaker-open-"))
    base.chmod(0o755)
    try:
        # The test's image sits in its own temporary folder.
        with running_api_server(base / "home", OPENMAKER_FILE_ROOTS=str(tmp_path)) as server:
            yield server
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_no_local_user_reads_a_secret_while_a_fastfile_job_runs(
    open_server: ApiServer, tmp_path: Path
) -> None:
    api_server = open_server
    s3 = api_server.client("s3")
    data = unique("ff")
    s3.create_bucket(Bucket=data)
    for number in range(2):
        s3.put_object(Bucket=data, Key=f"train/part-{number}", Body=b"x" * 1000)
    name = unique("fastfile")
    # The job keeps running (its key alive, its channel an rclone mount: a sharded FastFile
    # channel) until the scan is over, which the test signals through the job's own output.
    code = (
        ATTEMPTS
        + f"""
import time
s3 = boto3.client("s3", config=NO_RETRIES)
s3.put_object(Bucket={data!r}, Key="out/{name}/running", Body=b"")
deadline = time.time() + 60
while time.time() < deadline:
    try:
        s3.head_object(Bucket={data!r}, Key="out/{name}/scanned")
        break
    except ClientError:
        time.sleep(0.2)
finish()
"""
    )
    sagemaker = api_server.client("sagemaker")
    program = make_image(tmp_path / "image", f"#!{sys.executable}\n{code}")
    body = request(name, str(program), f"s3://{data}/out", {"train": f"s3://{data}/train/"})
    body["AlgorithmSpecification"]["TrainingInputMode"] = "FastFile"
    body["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3DataDistributionType"] = (
        "ShardedByS3Key"
    )
    sagemaker.create_training_job(**body)
    deadline = time.monotonic() + 60
    while "Contents" not in s3.list_objects_v2(Bucket=data, Prefix=f"out/{name}/running"):
        assert time.monotonic() < deadline, sagemaker.describe_training_job(TrainingJobName=name)
        time.sleep(0.2)
    assert mounted_rclone(api_server.home), "the FastFile channel is not an rclone mount"
    seen = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
         "/usr/bin/python3", "-c", SCAN, str(api_server.home)],
        capture_output=True, check=True, cwd="/",
    ).stdout  # fmt: skip
    s3.put_object(Bucket=data, Key=f"out/{name}/scanned", Body=b"")
    described = wait_ended(sagemaker, name)
    assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")
    _, job_secret = json.loads(model_file(api_server, described, "results.json"))["key"]
    assert b"serve\0s3" in seen  # the scan did see the endpoint's command line
    assert str(api_server.home / "s3").encode() in seen  # and the server's files
    assert api_server.env["AWS_SECRET_ACCESS_KEY"].encode() not in seen
    assert job_secret.encode() not in seen


def mounted_rclone(home: Path) -> bool:
    return any(
        "fuse.rclone" in line and str(home) in line
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
    )


def test_a_server_over_an_s3_server_never_hands_its_own_pair_to_a_job(
    s3_server: S3Server, tmp_path: Path
) -> None:
    """A server whose key pair is also the S3 server's credentials (as `openmaker env` needs for
    one set of client variables): the job's code gets the S3 server, without the pair."""
    bucket = unique("ext")
    s3_server.make_bucket(bucket)
    with running_api_server(
        tmp_path / "home", **s3_server.env(),
        OPENMAKER_ACCESS_KEY_ID=s3_server.access_key,
        OPENMAKER_SECRET_ACCESS_KEY=s3_server.secret_key,
    ) as server:  # fmt: skip
        name = unique("external")
        code = f"""
import json, os, boto3
from botocore.config import Config
sagemaker = boto3.client("sagemaker", endpoint_url={server.env["AWS_ENDPOINT_URL_SAGEMAKER"]!r},
                         config=Config(retries={{"max_attempts": 1}}))
try:
    sagemaker.describe_training_job(TrainingJobName={name!r})
    outcome = "ok"
except Exception as error:
    outcome = type(error).__name__
json.dump({{"describe": outcome, "env": {{k: v for k, v in os.environ.items()
                                         if k.startswith("AWS_")}}}},
          open("/opt/ml/model/results.json", "w"))
"""
        described = run_job(
            server, tmp_path, code, TrainingJobName=name, output=f"s3://{bucket}/out"
        )
        assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")
        results = json.loads(model_file(s3_server, described, "results.json"))
    assert results["describe"] != "ok"
    assert results["env"]["AWS_ENDPOINT_URL_S3"] == s3_server.url
    assert s3_server.secret_key not in results["env"].values()


@pytest.mark.parametrize("own_pair", [False, True], ids=["server-pair", "s3-pair-as-server"])
def test_a_server_over_an_s3_server_gives_its_jobs_scoped_keys(
    s3_server: S3Server, tmp_path: Path, own_pair: bool
) -> None:
    """Over the user's own S3 server with `OPENMAKER_S3_GATE=1`, the job's code gets the gate
    and a key of its own, never
    the S3 server's credentials (also when they are the server's key pair, as `openmaker env`
    needs for one set of client variables): it reads its channel and writes its output and
    checkpoints there, and nothing else; its key dies with it."""
    user = s3_server.client()
    data, victim, other = unique("data"), unique("victim"), unique("other")
    for bucket in (data, victim, other):
        s3_server.make_bucket(bucket)
    victim_key = "out/earlier-job/output/model.tar.gz"
    user.put_object(Bucket=victim, Key=victim_key, Body=b"the victim's model")
    user.put_object(Bucket=data, Key="out/earlier-job/output/model.tar.gz", Body=b"earlier")
    user.put_object(Bucket=other, Key="private.txt", Body=b"not yours")
    user.put_object(Bucket=data, Key="train/part-0", Body=b"training data")
    user.put_object(Bucket=data, Key="train-old/part-0", Body=b"another channel")
    pair = (
        {"OPENMAKER_ACCESS_KEY_ID": s3_server.access_key,
         "OPENMAKER_SECRET_ACCESS_KEY": s3_server.secret_key}
        if own_pair else {}
    )  # fmt: skip
    with running_api_server(
        tmp_path / "home", **s3_server.env(), **pair, OPENMAKER_S3_GATE="1"
    ) as server:
        name = unique("external")
        code = (
            ATTEMPTS
            + f"""
sagemaker = boto3.client("sagemaker", endpoint_url={server.env["AWS_ENDPOINT_URL_SAGEMAKER"]!r},
                         config=NO_RETRIES)
attempt("describe", lambda: sagemaker.describe_training_job(TrainingJobName={name!r}))
s3 = boto3.client("s3", config=NO_RETRIES)  # configured by the job's environment alone
attempt("overwrite victim", lambda: s3.put_object(
    Bucket={victim!r}, Key={victim_key!r}, Body=b"overwritten"))
attempt("overwrite earlier job", lambda: s3.put_object(
    Bucket={data!r}, Key="out/earlier-job/output/model.tar.gz", Body=b"overwritten"))
attempt("read earlier job", lambda: s3.get_object(
    Bucket={data!r}, Key="out/earlier-job/output/model.tar.gz"))
attempt("read other", lambda: s3.get_object(Bucket={other!r}, Key="private.txt"))
attempt("read sibling", lambda: s3.get_object(Bucket={data!r}, Key="train-old/part-0"))
attempt("write channel", lambda: s3.put_object(Bucket={data!r}, Key="train/x", Body=b"x"))
attempt("create bucket", lambda: s3.create_bucket(Bucket={unique("made")!r}))
results["buckets"] = sorted(b["Name"] for b in s3.list_buckets()["Buckets"])
results["channel"] = s3.get_object(Bucket={data!r}, Key="train/part-0")["Body"].read().decode()
attempt("write output", lambda: s3.put_object(
    Bucket={data!r}, Key="out/{name}/extra.txt", Body=b"mine"))
attempt("write checkpoint", lambda: s3.put_object(
    Bucket={data!r}, Key="checkpoints/{name}/step-1", Body=b"state"))
results["listed"] = [o["Key"] for o in s3.list_objects_v2(
    Bucket={data!r}, Prefix="checkpoints/{name}/").get("Contents", [])]
results["env"] = dict(os.environ)
finish()
"""
        )
        described = run_job(
            server, tmp_path, code, TrainingJobName=name, output=f"s3://{data}/out",
            channels={"train": f"s3://{data}/train/"},
            CheckpointConfig={"S3Uri": f"s3://{data}/checkpoints/{name}"},
        )  # fmt: skip
        assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")
        results = json.loads(model_file(s3_server, described, "results.json"))
        gate, (key_id, secret) = results["env"]["AWS_ENDPOINT_URL_S3"], results["key"]
        assert_cannot_sign(server, results["key"], name)
        server_key = s3_as_at(gate, server.env["AWS_ACCESS_KEY_ID"],
                              server.env["AWS_SECRET_ACCESS_KEY"])  # fmt: skip
        with pytest.raises(ClientError) as refused:
            server_key.list_buckets()  # the server's own key: clients use the S3 server
        assert refused.value.response["Error"]["Code"] == "InvalidAccessKeyId"
        # The job has ended: its key opens nothing any more, though rclone may still hold its
        # backend (it asks the auth proxy again only after 5 minutes).
        job = s3_as_at(gate, key_id, secret)
        calls: list[Callable[[], Any]] = [
            lambda: job.get_object(Bucket=data, Key="train/part-0"),
            lambda: job.put_object(Bucket=data, Key=f"out/{name}/late.txt", Body=b"late"),
            lambda: job.list_objects_v2(Bucket=data, Prefix=f"out/{name}/"),
        ]
        for call in calls:
            with pytest.raises(ClientError) as refused:
                call()
            assert refused.value.response["Error"]["Code"] == "InvalidAccessKeyId"
    assert results["describe"] == "unreachable"  # the job's own network does not reach it
    assert gate != s3_server.url and key_id != s3_server.access_key
    assert not any(s3_server.secret_key in value for value in results["env"].values())
    assert not any(server.env["AWS_SECRET_ACCESS_KEY"] in v for v in results["env"].values())
    for label in ("overwrite victim", "overwrite earlier job", "read earlier job", "read other",
                  "read sibling", "write channel", "create bucket"):  # fmt: skip
        assert results[label] == "AccessDenied", (label, results[label])
    assert user.get_object(Bucket=victim, Key=victim_key)["Body"].read() == b"the victim's model"
    earlier = user.get_object(Bucket=data, Key="out/earlier-job/output/model.tar.gz")
    assert earlier["Body"].read() == b"earlier"
    assert results["buckets"] == [data]
    assert results["channel"] == "training data"
    assert results["write output"] == "ok" and results["write checkpoint"] == "ok"
    assert results["listed"] == [f"checkpoints/{name}/step-1"]
    # Written through the gate: on the user's S3 server.
    assert user.get_object(Bucket=data, Key=f"out/{name}/extra.txt")["Body"].read() == b"mine"
    assert listed(user, data, f"out/{name}/late") == []


def s3_as_at(url: str, key_id: str, secret: str) -> Any:
    return boto3.client(
        "s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=key_id,
        aws_secret_access_key=secret, config=NO_RETRIES,
    )  # fmt: skip


def test_the_server_revokes_the_key_of_a_killed_worker(
    api_server: ApiServer, tmp_path: Path
) -> None:
    """The worker that would revoke the key is killed outright: the server revokes it."""
    s3, sagemaker = api_server.client("s3"), api_server.client("sagemaker")
    bucket, name = unique("killed"), unique("killed")
    s3.create_bucket(Bucket=bucket)
    code = f"""
import json, os, time, boto3
key = [os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]]
boto3.client("s3").put_object(Bucket={bucket!r}, Key="out/{name}/key.json",
                              Body=json.dumps(key).encode())
time.sleep(120)
"""
    program = make_image(tmp_path / "image", f"#!{sys.executable}\n{code}")
    sagemaker.create_training_job(**request(name, str(program), f"s3://{bucket}/out"))
    deadline = time.monotonic() + 60
    while not listed(s3, bucket, f"out/{name}/key.json"):
        assert time.monotonic() < deadline, "the job's code did not start"
        time.sleep(0.2)
    key_id, secret = json.loads(
        s3.get_object(Bucket=bucket, Key=f"out/{name}/key.json")["Body"].read()
    )
    job = s3_as(api_server, key_id, secret)
    assert listed(job, bucket, f"out/{name}/") == [f"out/{name}/key.json"]
    record = json.loads((api_server.home / "gate" / "keys" / f"{key_id}.json").read_text())
    os.kill(record["worker"][0], signal.SIGKILL)
    # Liveness, not speed (the README says "within seconds"): nothing but the server's sweep
    # revokes this key, and without it the key works for good.
    wait_until(lambda: not listed(job, bucket, f"out/{name}/"), "the killed job's key to die")
    with pytest.raises(ClientError):
        job.put_object(Bucket=bucket, Key=f"out/{name}/late", Body=b"late")
    wait_ended(sagemaker, name)
