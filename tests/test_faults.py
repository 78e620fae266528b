"""Faults from outside a job: its S3 server going away and coming back, a full disk."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import random
import re
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from openmaker.training.service import TrainingJobs
from tests.apiserver import running_api_server
from tests.helpers import (
    get_object,
    log_text,
    make_image,
    put_objects,
    request,
    stopped_at_the_end,
    wait_for,
    wait_for_log,
    wait_for_secondary_status,
)
from tests.process_helpers import wait_until
from tests.s3server import RestartableS3Server, served_bytes

BUCKET = "faults"
MiB = 1024 * 1024


@contextmanager
def _own_server(
    root: Path, monkeypatch: pytest.MonkeyPatch, *options: str
) -> Iterator[RestartableS3Server]:
    server = RestartableS3Server(root, options)
    server.start()
    for name, value in server.server.env().items():
        monkeypatch.setenv(name, value)
    server.server.make_bucket(BUCKET)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def flaky_s3(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RestartableS3Server]:
    """A server of this test's own, which it may stop and start again."""
    with _own_server(tmp_path / "s3root", monkeypatch) as server:
        yield server


@pytest.fixture
def slow_s3(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RestartableS3Server]:
    """The same, moving 4 MB a second: an upload of tens of MiB is under way for seconds."""
    with _own_server(tmp_path / "s3root", monkeypatch, "--bwlimit", "4M") as server:
        yield server


@contextmanager
def _small_filesystem(folder: Path, size: str) -> Iterator[Path]:
    """`folder` on a tmpfs of `size` of its own (the test is skipped where that cannot be)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "openmaker-test-disk", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=False)


@pytest.fixture
def small_disk(home: Path) -> Iterator[Path]:
    """The jobs folder on a 40 MiB filesystem of its own."""
    with _small_filesystem(home / "jobs", "40m") as jobs:
        yield jobs


SHA256_OF_THE_CHANNEL = (
    f"#!{sys.executable}\nimport hashlib\n"
    "print(hashlib.sha256(open('/opt/ml/input/data/train/x.bin', 'rb').read()).hexdigest())\n"
)


def test_a_download_waits_for_the_server_to_come_back(
    tmp_path: Path, flaky_s3: RestartableS3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENMAKER_STORE_RETRY_SECONDS", "60")
    data = os.urandom(8 * MiB)
    put_objects({f"s3://{BUCKET}/data/train/x.bin": data})
    image = make_image(tmp_path / "image", SHA256_OF_THE_CHANNEL)
    jobs = TrainingJobs()
    flaky_s3.stop()
    channels = {"train": f"s3://{BUCKET}/data/train"}
    body = request("dl-back", str(image), f"s3://{BUCKET}/out", channels)
    jobs.create(body)
    wait_for_secondary_status(jobs, "dl-back", "Downloading")
    time.sleep(0.2)  # away a little longer: the download must wait, not fail
    # Waiting for the server, not failed.
    assert jobs.describe("dl-back")["SecondaryStatus"] == "Downloading"
    flaky_s3.start()
    description = wait_for(jobs, "dl-back", timeout=90)
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    assert hashlib.sha256(data).hexdigest() in log_text(jobs, "dl-back")


def test_a_server_lost_in_the_middle_of_a_download_comes_back_and_the_code_gets_it_whole(
    tmp_path: Path, slow_s3: RestartableS3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENMAKER_STORE_RETRY_SECONDS", "10")
    size = 12 * MiB  # about three seconds at 4 MB/s
    data = os.urandom(size)
    put_objects({f"s3://{BUCKET}/data/train/x.bin": data})
    image = make_image(tmp_path / "image", SHA256_OF_THE_CHANNEL)
    jobs = TrainingJobs()
    channels = {"train": f"s3://{BUCKET}/data/train"}
    before = served_bytes(slow_s3.server.root)
    with stopped_at_the_end(jobs, "dl-cut"):
        jobs.create(request("dl-cut", str(image), f"s3://{BUCKET}/out", channels))
        wait_until(
            lambda: served_bytes(slow_s3.server.root) - before > MiB, "the download under way"
        )
        served = _lose(slow_s3) - before
        assert MiB < served < size  # cut in the middle of the object
        time.sleep(1)  # away for a second, well within the retry limit
        slow_s3.start()
        description = wait_for(jobs, "dl-cut", timeout=120)
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    assert log_text(jobs, "dl-cut") == hashlib.sha256(data).hexdigest()


def test_a_download_from_a_server_that_stays_away_fails_clearly(
    tmp_path: Path, flaky_s3: RestartableS3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENMAKER_STORE_RETRY_SECONDS", "2")
    put_objects({f"s3://{BUCKET}/data/train/x.bin": b"x"})
    image = make_image(tmp_path / "image", "#!/bin/sh\necho never\n")
    jobs = TrainingJobs()
    flaky_s3.stop()
    jobs.create(
        request("dl-gone", str(image), f"s3://{BUCKET}/out", {"train": f"s3://{BUCKET}/data"})
    )
    description = wait_for(jobs, "dl-gone", timeout=90)
    assert description["TrainingJobStatus"] == "Failed"
    assert description["FailureReason"].startswith("ClientError: ")
    assert "train" in description["FailureReason"]
    assert "never" not in log_text(jobs, "dl-gone")


# Trains, then waits until its S3 server is gone (the test stops it), then writes its last
# checkpoint and ends: its outputs and checkpoints are then uploaded to a server that is away.
UPLOADING_TO_A_GONE_SERVER = f"""#!{sys.executable}
import http.client, os, time, urllib.parse
open("/opt/ml/model/weights.bin", "wb").write(os.urandom(24 * 1024 * 1024))
open("/opt/ml/checkpoints/step-1.bin", "wb").write(b"1")
print("trained", flush=True)
url = urllib.parse.urlsplit(os.environ["AWS_ENDPOINT_URL_S3"])
# Gone once nothing answers HTTP there: the host's own network relays the endpoint, so a
# connection is taken even while the server is away, and closed unanswered.
while True:
    try:
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=1)
        connection.request("HEAD", "/")
        connection.getresponse()
        connection.close()
    except (OSError, http.client.HTTPException):
        break
    time.sleep(0.05)
open("/opt/ml/checkpoints/step-2.bin", "wb").write(b"2")
print("server gone", flush=True)
"""


def _run_until_server_gone(
    tmp_path: Path, flaky_s3: RestartableS3Server, name: str
) -> tuple[TrainingJobs, bytes]:
    image = make_image(tmp_path / "image", UPLOADING_TO_A_GONE_SERVER)
    jobs = TrainingJobs()
    body = request(name, str(image), f"s3://{BUCKET}/out")
    body["CheckpointConfig"] = {"S3Uri": f"s3://{BUCKET}/ckpt/{name}"}
    jobs.create(body)
    wait_for_log(jobs, name, "trained")
    weights = Path(os.environ["OPENMAKER_HOME"]) / "jobs" / name / "algo-1/ml/model/weights.bin"
    written = weights.read_bytes()
    flaky_s3.stop()
    return jobs, written


def test_outputs_and_checkpoints_wait_for_the_server_to_come_back(
    tmp_path: Path, flaky_s3: RestartableS3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENMAKER_STORE_RETRY_SECONDS", "60")
    jobs, weights = _run_until_server_gone(tmp_path, flaky_s3, "up-back")
    wait_for_log(jobs, "up-back", "server gone")
    # Away for seconds: the last checkpoints (then the outputs) wait for the server.
    time.sleep(3)
    assert jobs.describe("up-back")["TrainingJobStatus"] == "InProgress"
    flaky_s3.start()
    description = wait_for(jobs, "up-back", timeout=120)
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    archive = get_object(description["ModelArtifacts"]["S3ModelArtifacts"])
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        member = tar.extractfile("weights.bin")
        assert member is not None and member.read() == weights
    assert get_object(f"s3://{BUCKET}/ckpt/up-back/step-2.bin") == b"2"


def test_outputs_for_a_server_that_stays_away_fail_clearly_and_leave_nothing(
    tmp_path: Path, flaky_s3: RestartableS3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENMAKER_STORE_RETRY_SECONDS", "2")
    jobs, _ = _run_until_server_gone(tmp_path, flaky_s3, "up-gone")
    description = wait_for(jobs, "up-gone", timeout=120)
    assert description["TrainingJobStatus"] == "Failed"
    assert "could not upload" in description["FailureReason"]
    flaky_s3.start()
    with pytest.raises(FileNotFoundError):
        get_object(f"s3://{BUCKET}/out/up-gone/output/model.tar.gz")
    job_dir = Path(os.environ["OPENMAKER_HOME"]) / "jobs" / "up-gone"
    assert not (job_dir / "artifacts").exists()


# Writes a model of 24 MiB that does not compress, the same bytes every time: the archive is
# uploaded in two parts (store/multipart.py).
MODEL_SIZE = 24 * MiB
WRITES_A_KNOWN_MODEL = (
    f"#!{sys.executable}\nimport random\n"
    f"open('/opt/ml/model/weights.bin', 'wb').write(random.Random(7).randbytes({MODEL_SIZE}))\n"
)


def _model_upload_cut_in_the_middle(
    tmp_path: Path, server: RestartableS3Server, jobs: TrainingJobs, name: str
) -> None:
    """Start a job and lose its server once part of its model archive is on the server: the
    archive is not there on the frozen server, so the cut came in the middle of the upload."""
    image = make_image(tmp_path / "image", WRITES_A_KNOWN_MODEL)
    jobs.create(request(name, str(image), f"s3://{BUCKET}/out"))
    key = f"out/{name}/output/model.tar.gz"
    # A wait, not a timing: on a loaded machine the job's start alone can take a minute.
    wait_until(lambda: 0 < _bytes_in_parts(server, key) < MODEL_SIZE, "a part of the archive", 240)
    _freeze(server)
    assert not (server.server.root / BUCKET / key).exists(), "the upload ended before the cut"
    _lose(server)


def test_a_server_lost_briefly_in_the_middle_of_the_model_upload_gets_the_whole_archive(
    tmp_path: Path, slow_s3: RestartableS3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server forgets the multipart upload it had: openmaker begins it again."""
    monkeypatch.setenv("OPENMAKER_STORE_RETRY_SECONDS", "10")
    jobs = TrainingJobs()
    with stopped_at_the_end(jobs, "cut-off"):
        _model_upload_cut_in_the_middle(tmp_path, slow_s3, jobs, "cut-off")
        time.sleep(1)  # away for a second, well within the retry limit
        slow_s3.start()
        description = wait_for(jobs, "cut-off", timeout=120)
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    archive = get_object(f"s3://{BUCKET}/out/cut-off/output/model.tar.gz")
    gzip.decompress(archive)  # whole: its length and CRC match what was compressed
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        assert tar.getnames() == ["weights.bin"]
        member = tar.extractfile("weights.bin")
        assert member is not None
        assert member.read() == random.Random(7).randbytes(MODEL_SIZE)


def test_a_server_lost_for_longer_than_the_retry_limit_mid_upload_fails_clearly(
    tmp_path: Path, slow_s3: RestartableS3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENMAKER_STORE_RETRY_SECONDS", "2")
    jobs = TrainingJobs()
    with stopped_at_the_end(jobs, "cut-long"):
        _model_upload_cut_in_the_middle(tmp_path, slow_s3, jobs, "cut-long")
        description = wait_for(jobs, "cut-long", timeout=120)  # the server is still away
    assert description["TrainingJobStatus"] == "Failed"
    # Which object, and why, in a line: no request URL (an upload's id), no debug dump.
    assert re.fullmatch(
        rf"InternalServerError: could not upload outputs: cannot upload "
        rf"s3://{BUCKET}/out/cut-long/output/(model|output)\.tar\.gz: the object store at "
        rf"{re.escape(slow_s3.server.url)} could not be reached \([^()]+; retried for \d+ s\)",
        description["FailureReason"],
    ), description["FailureReason"]
    assert "ModelArtifacts" not in description
    slow_s3.start()
    with pytest.raises(FileNotFoundError):
        get_object(f"s3://{BUCKET}/out/cut-long/output/model.tar.gz")
    assert not (slow_s3.server.root / BUCKET / "out/cut-long/output/model.tar.gz").exists()


def _bytes_in_parts(server: RestartableS3Server, key: str) -> int:
    """Bytes in the parts the server holds of the multipart uploads of `key`."""
    client = server.server.client()
    try:
        uploads = client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    except client.exceptions.NoSuchUpload:  # rclone's answer while there are none
        return 0
    return sum(
        part["Size"]
        for upload in uploads
        if upload["Key"] == key
        for part in client.list_parts(Bucket=BUCKET, Key=key, UploadId=upload["UploadId"]).get(
            "Parts", []
        )
    )


def _freeze(server: RestartableS3Server) -> None:
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)


def _lose(server: RestartableS3Server) -> int:
    """Kill the server, as a machine that goes away; returns the bytes it had sent. It is
    frozen first, so that it sends none between the count and the kill."""
    _freeze(server)
    served = served_bytes(server.server.root)
    server.stop()
    return served


def test_a_disk_without_room_for_a_volume_fails_the_job_before_it_starts(
    tmp_path: Path, small_disk: Path
) -> None:
    image = make_image(tmp_path / "image", "#!/bin/sh\necho trained > /opt/ml/model/m.txt\n")
    jobs = TrainingJobs()
    jobs.create(request("no-room", str(image), "s3://disk/out"))
    description = wait_for(jobs, "no-room", timeout=90)
    assert description["TrainingJobStatus"] == "Failed"
    assert description["FailureReason"].startswith("CapacityError: openmaker's disk has no room")
    assert "ModelArtifacts" not in description
    assert not [p for p in small_disk.glob("no-room/algo-*")]


def test_a_full_volume_while_downloading_fails_the_job_and_no_other(
    tmp_path: Path, home: Path
) -> None:
    # A sparse 1.2 GB object in the embedded store: more than the 1 GB volume holds, at no
    # cost on this machine's disk until it is downloaded.
    data = home / "s3" / "disk" / "data"
    data.mkdir(parents=True)
    with open(data / "big.bin", "wb") as big:
        big.truncate(1200 * MiB)
    image = make_image(tmp_path / "image", "#!/bin/sh\necho trained > /opt/ml/model/m.txt\n")
    jobs = TrainingJobs()
    body = request("too-big", str(image), "s3://disk/out", {"train": "s3://disk/data"})
    body["ResourceConfig"]["VolumeSizeInGB"] = 1
    jobs.create(body)
    description = wait_for(jobs, "too-big", timeout=120)
    assert description["TrainingJobStatus"] == "Failed"
    assert description["FailureReason"] == (
        "ClientError: no space left on the job's volume (1 GB) while downloading input data"
    )
    # The failed job's volume went with it: the next job runs.
    body = request("fits", str(image), "s3://disk/out")
    body["ResourceConfig"]["VolumeSizeInGB"] = 1
    jobs.create(body)
    assert wait_for(jobs, "fits")["TrainingJobStatus"] == "Completed"


def test_a_model_too_big_to_pack_fails_clearly_and_uploads_nothing(
    tmp_path: Path, home: Path
) -> None:
    # 160 MiB that do not compress, then the volume filled (without writing) to 40 MiB of free
    # space: the archive, built on the volume, cannot fit.
    script = (
        f"#!{sys.executable}\nimport os\n"
        "open('/opt/ml/model/huge.bin', 'wb').write(os.urandom(160 * 1024 * 1024))\n"
        "free = os.statvfs('/opt/ml').f_bavail * os.statvfs('/opt/ml').f_frsize\n"
        "fd = os.open('/opt/ml/output/filler', os.O_WRONLY | os.O_CREAT)\n"
        "os.posix_fallocate(fd, 0, free - 40 * 1024 * 1024)\n"
    )
    image = make_image(tmp_path / "image", script)
    jobs = TrainingJobs()
    body = request("huge-model", str(image), "s3://disk/out")
    body["ResourceConfig"]["VolumeSizeInGB"] = 1
    jobs.create(body)
    description = wait_for(jobs, "huge-model", timeout=120)
    assert description["TrainingJobStatus"] == "Failed"
    assert description["FailureReason"] == (
        "ClientError: no space left on the job's volume (1 GB) while packing outputs"
    )
    assert "ModelArtifacts" not in description
    with pytest.raises(FileNotFoundError):
        get_object("s3://disk/out/huge-model/output/model.tar.gz")
    assert not list((home / "jobs" / "huge-model").glob("algo-*"))


def test_the_api_says_when_openmakers_own_disk_is_full(tmp_path: Path) -> None:
    """Whatever fills the disk that holds the database (not a job: jobs write to their volumes),
    a create is a 503 the client retries, saying why, and reads go on."""
    with _small_filesystem(tmp_path / "disk", "64m") as disk:
        image = make_image(tmp_path / "image", "#!/bin/sh\necho trained\n")
        with running_api_server(disk / "home", OPENMAKER_FILE_ROOTS=str(tmp_path)) as server:
            sagemaker = server.client("sagemaker", config=Config(retries={"max_attempts": 1}))
            filler = disk / "filler"
            with open(filler, "wb") as out, contextlib.suppress(OSError):
                while True:
                    out.write(b"\0" * MiB)
                    out.flush()
            body = request("on-full-disk", str(image), "s3://b/out")
            with pytest.raises(ClientError) as refused:
                for number in range(50):  # until the database has used its last free page
                    sagemaker.create_training_job(**{**body, "TrainingJobName": f"full-{number}"})
            error = refused.value.response
            assert error["ResponseMetadata"]["HTTPStatusCode"] == 503
            assert error["Error"]["Code"] == "ServiceUnavailable"
            assert "disk is full" in error["Error"]["Message"]
            assert sagemaker.list_training_jobs()["ResponseMetadata"]["HTTPStatusCode"] == 200
            filler.unlink()
            sagemaker.create_training_job(**{**body, "TrainingJobName": "after-the-disk-freed"})


def test_a_stop_while_downloading_ends_the_download_and_names_no_artifacts(
    tmp_path: Path, slow_s3: RestartableS3Server
) -> None:
    # 48 MiB at 4 MB/s: twelve seconds of downloading, which the stop must cut short.
    size = 48 * MiB
    put_objects({f"s3://{BUCKET}/data/stop/x.bin": os.urandom(size)})
    before = served_bytes(slow_s3.server.root)
    image = make_image(tmp_path / "image", "#!/bin/sh\necho never\n")
    jobs = TrainingJobs()
    channels = {"train": f"s3://{BUCKET}/data/stop"}
    jobs.create(request("stop-dl", str(image), f"s3://{BUCKET}/out", channels))
    wait_for_secondary_status(jobs, "stop-dl", "Downloading")
    jobs.stop("stop-dl")
    description = wait_for(jobs, "stop-dl", timeout=60)
    assert description["TrainingJobStatus"] == "Stopped", description
    assert "never" not in log_text(jobs, "stop-dl")
    assert "ModelArtifacts" not in description
    with pytest.raises(FileNotFoundError):
        get_object(f"s3://{BUCKET}/out/stop-dl/output/model.tar.gz")
    # The download was given up, not waited for.
    assert served_bytes(slow_s3.server.root) - before < size // 2
