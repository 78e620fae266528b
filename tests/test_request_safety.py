"""What a request through the API may reach, and the home it must not expose.

Every attack goes through a real `openmaker server` with boto3 (the key pair a job's code may
once have held), or through the real `openmaker` command; each shows that nothing got out.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, WaiterError

from openmaker.store import UnsafeKeyError, safe_destination
from tests.apiserver import ApiServer, running_api_server
from tests.helpers import make_image, request, source_of
from tests.s3server import free_port

NO_RETRIES = Config(retries={"max_attempts": 1, "mode": "standard"})
OPENMAKER = Path(sys.executable).parent / "openmaker"
# The code records what its channel holds: a job refused before it starts writes nothing.
SHOW_CHANNEL = "#!/bin/sh\nls -A /opt/ml/input/data/train > /opt/ml/model/seen\n"
CHANNEL_MEMBER = "InputDataConfig.1.member.DataSource.S3DataSource.S3Uri"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the machine's owner lists in OPENMAKER_FILE_ROOTS; the home is inside it."""
    return tmp_path_factory.mktemp("owner")


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[ApiServer]:
    with running_api_server(root / "home", OPENMAKER_FILE_ROOTS=str(root)) as running:
        yield running


@pytest.fixture(scope="module")
def sagemaker(server: ApiServer) -> Any:
    return server.client("sagemaker", config=NO_RETRIES)


@pytest.fixture(scope="module")
def image(root: Path) -> str:
    return str(make_image(root / "image", SHOW_CHANNEL))


@pytest.fixture(scope="module")
def bucket(server: ApiServer) -> str:
    name = unique("safety")
    server.client("s3").create_bucket(Bucket=name)
    return name


def refused(sagemaker: Any, body: dict[str, Any]) -> str:
    """The message of the ValidationException CreateTrainingJob answers; the job must not exist."""
    with pytest.raises(ClientError) as caught:
        sagemaker.create_training_job(**body)
    error = caught.value.response["Error"]
    assert error["Code"] == "ValidationException", error
    with pytest.raises(ClientError, match="ResourceNotFound"):
        sagemaker.describe_training_job(TrainingJobName=body["TrainingJobName"])
    return str(error["Message"])


def finished(sagemaker: Any, name: str) -> dict[str, Any]:
    waiter = sagemaker.get_waiter("training_job_completed_or_stopped")
    with contextlib.suppress(WaiterError):  # it raises on Failed
        waiter.wait(TrainingJobName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    return dict(sagemaker.describe_training_job(TrainingJobName=name))


def channel_files(server: ApiServer, name: str) -> list[Path]:
    """Whatever landed in the job's channel folders on this machine."""
    return [p for p in (server.home / "jobs" / name).glob("*/ml/input/data/*/**/*") if p.is_file()]


def test_local_paths_outside_the_owners_folders_are_refused(
    server: ApiServer, sagemaker: Any, image: str, bucket: str, root: Path, tmp_path: Path
) -> None:
    target = Path("/root") / unique("planted")
    body = request(unique("ckpt"), image, f"s3://{bucket}/out")
    body["CheckpointConfig"] = {"S3Uri": target.as_uri()}
    assert "at 'CheckpointConfig.S3Uri'" in refused(sagemaker, body)
    assert not target.exists()

    # The home is refused even though the owner's folder holds it: credentials, database.
    for mode in ("FastFile", "File"):
        body = request(unique("home"), image, f"s3://{bucket}/out", {"train": f"file://{root}"})
        body["AlgorithmSpecification"]["TrainingInputMode"] = mode
        source_of(body)["S3Uri"] = server.home.as_uri()
        message = refused(sagemaker, body)
        assert f"at '{CHANNEL_MEMBER}'" in message and "openmaker's home" in message
        credentials = (server.home / "credentials.json").as_uri()
        source_of(body)["S3Uri"] = credentials
        assert f"at '{CHANNEL_MEMBER}'" in refused(sagemaker, body)

    before = sorted(os.listdir("/etc/cron.d"))
    body = request(unique("cron"), image, "file:///etc/cron.d/")
    assert "at 'OutputDataConfig.S3OutputPath'" in refused(sagemaker, body)
    assert sorted(os.listdir("/etc/cron.d")) == before

    # A link in the owner's folder does not carry a request out of it, nor does `..`.
    link = root / unique("link")
    link.symlink_to("/root")
    for uri in (link.as_uri(), f"file://{root}/../../../root"):
        body = request(unique("link"), image, f"s3://{bucket}/out", {"train": uri})
        assert f"at '{CHANNEL_MEMBER}'" in refused(sagemaker, body)

    # A local image folder is shown to the code: a host folder is a file path too.
    body = request(unique("image"), "/etc", f"s3://{bucket}/out")
    body["AlgorithmSpecification"]["ContainerEntrypoint"] = ["cat", "/opt/program/shadow"]
    assert "at 'AlgorithmSpecification.TrainingImage'" in refused(sagemaker, body)
    # And so is a local source archive of script mode.
    body = request(unique("source"), "openmaker://script-mode", f"s3://{bucket}/out")
    body["HyperParameters"] = {
        "sagemaker_program": '"train.py"',
        "sagemaker_submit_directory": json.dumps(str(tmp_path / "sourcedir.tar.gz")),
    }
    assert "at 'HyperParameters.sagemaker_submit_directory'" in refused(sagemaker, body)


def test_a_local_path_under_the_owners_folder_works(
    server: ApiServer, sagemaker: Any, image: str, root: Path
) -> None:
    data = root / unique("data")
    data.mkdir()
    (data / "rows.csv").write_text("1\n2\n")
    output = root / unique("out")
    name = unique("allowed")
    sagemaker.create_training_job(**request(name, image, output.as_uri(), {"train": data.as_uri()}))
    described = finished(sagemaker, name)
    assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")
    assert (output / name / "output" / "model.tar.gz").stat().st_size > 0


def test_no_local_path_through_the_api_by_default(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with running_api_server(tmp_path / "home", OPENMAKER_FILE_ROOTS="") as server:
        sagemaker = server.client("sagemaker", config=NO_RETRIES)
        body = request(unique("default"), "openmaker://script-mode", "s3://b/out")
        body["InputDataConfig"] = request("-", "-", "-", {"t": data.as_uri()})["InputDataConfig"]
        message = refused(sagemaker, body)
    assert "at 'InputDataConfig.1.member.DataSource.S3DataSource.S3Uri'" in message
    assert "OPENMAKER_FILE_ROOTS" in message


def test_dot_segments_in_s3_uris_are_refused_at_create(
    sagemaker: Any, image: str, bucket: str
) -> None:
    body = request(unique("dots"), image, f"s3://{bucket}/out", {"train": f"s3://{bucket}/../.."})
    body["CheckpointConfig"] = {"S3Uri": f"s3://{bucket}/a/./b"}
    message = refused(sagemaker, body)
    assert f"at '{CHANNEL_MEMBER}'" in message and "at 'CheckpointConfig.S3Uri'" in message


def put(server: ApiServer, bucket: str, key: str, data: bytes) -> None:
    server.client("s3").put_object(Bucket=bucket, Key=key, Body=data)


def test_a_manifest_names_only_its_own_bucket(
    server: ApiServer, sagemaker: Any, image: str, bucket: str
) -> None:
    other = unique("other")
    server.client("s3").create_bucket(Bucket=other)
    put(server, other, "secret/s.txt", b"another bucket's secret\n")
    manifests = {
        "host": [{"prefix": "file:///etc/"}, "hostname"],
        "other": [{"prefix": f"s3://{other}/secret/"}, "s.txt"],
        "climb": [{"prefix": f"s3://{bucket}/m/"}, "../../other/secret/s.txt"],
    }
    for label, manifest in manifests.items():
        put(server, bucket, f"m/{label}.json", json.dumps(manifest).encode())
        name = unique(f"manifest-{label}")
        body = request(name, image, f"s3://{bucket}/out", {"train": f"s3://{bucket}/m/{label}"})
        source_of(body).update(S3DataType="ManifestFile", S3Uri=f"s3://{bucket}/m/{label}.json")
        sagemaker.create_training_job(**body)
        described = finished(sagemaker, name)
        assert described["TrainingJobStatus"] == "Failed"
        reason = described["FailureReason"]
        offending = manifest[1] if label == "climb" else manifest[0]["prefix"]  # type: ignore[index]
        assert reason.startswith("ClientError: channel 'train'") and repr(offending) in reason
        assert channel_files(server, name) == []

    # An augmented manifest's references likewise (Pipe mode streams them).
    line = {"source-ref": "file:///etc/hostname", "label": 1}
    put(server, bucket, "m/augmented.jsonl", json.dumps(line).encode() + b"\n")
    name = unique("augmented")
    body = request(name, image, f"s3://{bucket}/out", {"train": f"s3://{bucket}/m/augmented"})
    body["AlgorithmSpecification"]["TrainingInputMode"] = "Pipe"
    source_of(body).update(
        S3DataType="AugmentedManifestFile",
        S3Uri=f"s3://{bucket}/m/augmented.jsonl",
        AttributeNames=["source-ref", "label"],
    )
    sagemaker.create_training_job(**body)
    described = finished(sagemaker, name)
    assert described["TrainingJobStatus"] == "Failed"
    assert "'file:///etc/hostname'" in described["FailureReason"]


def test_a_key_no_file_can_hold_fails_the_job_naming_it(
    server: ApiServer, sagemaker: Any, image: str, bucket: str
) -> None:
    put(server, bucket, "keys/good.csv", b"1\n")
    put(server, bucket, "keys/bad\nname.csv", b"2\n")
    name = unique("newline")
    sagemaker.create_training_job(
        **request(name, image, f"s3://{bucket}/out", {"train": f"s3://{bucket}/keys/"})
    )
    described = finished(sagemaker, name)
    assert described["TrainingJobStatus"] == "Failed"
    reason = described["FailureReason"]
    assert reason.startswith("ClientError: ") and "'keys/bad\\nname.csv'" in reason, reason
    assert channel_files(server, name) == []


def test_a_key_longer_than_a_file_name_is_refused(tmp_path: Path) -> None:
    # An S3 server holds keys whose segments no Linux file name can hold (255 bytes at most).
    with pytest.raises(UnsafeKeyError, match="longer than 255 bytes"):
        safe_destination(tmp_path, "a/" + "x" * 256)
    with pytest.raises(UnsafeKeyError, match="too long"):
        safe_destination(tmp_path, "/".join(["y" * 200] * 25))
    assert safe_destination(tmp_path, "a/" + "é" * 127) == tmp_path / "a" / ("é" * 127)


def private(path: Path) -> bool:
    return stat.S_IMODE(path.lstat().st_mode) & 0o077 == 0


def test_the_home_and_its_files_are_private(
    server: ApiServer, sagemaker: Any, image: str, bucket: str
) -> None:
    put(server, bucket, "rows/r.csv", b"1\n")
    name = unique("private")
    sagemaker.create_training_job(
        **request(name, image, f"s3://{bucket}/out", {"train": f"s3://{bucket}/rows/"})
    )
    assert finished(sagemaker, name)["TrainingJobStatus"] == "Completed"
    home = server.home
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    files = [p for p in home.iterdir() if p.is_file()]
    files += [home / "jobs" / name / "worker.log", home / "jobs" / name / "launch.json"]
    assert {"openmaker.db", "credentials.json", "s3-endpoint.log"} <= {p.name for p in files}
    assert [p for p in files if not private(p)] == []


def run_openmaker(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OPENMAKER_"))}
    env["OPENMAKER_HOME"] = str(home)
    return subprocess.run(
        [str(OPENMAKER), *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_an_existing_home_is_tightened(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert run_openmaker(home, "jobs", "list").returncode == 0
    # A new home's list makes no database (it has no job to show); a describe makes it.
    assert "not found" in run_openmaker(home, "jobs", "describe", "none").stderr.lower()
    home.chmod(0o755)
    (home / "openmaker.db").chmod(0o644)
    assert run_openmaker(home, "jobs", "list").returncode == 0
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert private(home / "openmaker.db")


@pytest.mark.parametrize("content", [b"", b"not a database at all\n" * 100])
def test_a_broken_database_is_one_line_naming_it(tmp_path: Path, content: bytes) -> None:
    home = tmp_path / "home"
    home.mkdir()
    database = home / "openmaker.db"
    database.write_bytes(content)
    server = ["server", "--port", str(free_port()), "--s3-port", str(free_port())]
    for command in (["jobs", "list"], server):
        result = run_openmaker(home, *command)
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and str(database) in lines[0], result.stderr
        assert "Traceback" not in result.stderr + result.stdout
    assert database.read_bytes() == content  # never taken for a fresh database
    shutil.rmtree(home)
