"""A real S3 server behind a proxy that answers 5xx a few times, or never answers: transfers
retry the errors and get every byte; a stop ends a job whose download hangs."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from openmaker.jobs.executor import process_lost
from openmaker.settings import load_settings
from openmaker.store import Download, download_all, ranged, resolve, upload_file
from openmaker.store.stream import stream_object
from openmaker.store.transfer import SINGLE_PUT_LIMIT
from openmaker.training.service import TrainingJobs
from tests.helpers import (
    get_object,
    log_text,
    make_image,
    request,
    stopped_at_the_end,
    wait_for,
)
from tests.process_helpers import wait_for_no_processes, wait_until, worker_pid
from tests.s3proxy import Fault, Matches, S3Proxy, Seen, object_get
from tests.s3server import RestartableS3Server, S3Server

BUCKET = "answers"
MiB = 1024 * 1024


@pytest.fixture
def proxy(s3_server: S3Server, home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Proxy]:
    """The shared S3 server behind a proxy, which this test's transfers (and jobs) go through."""
    s3_server.make_bucket(BUCKET)
    in_front = S3Proxy(s3_server.url)
    for name, value in {**s3_server.env(), "AWS_ENDPOINT_URL_S3": in_front.url}.items():
        monkeypatch.setenv(name, value)
    yield in_front
    in_front.close()


def _statuses(proxy: S3Proxy, matches: Matches) -> list[int]:
    return [s.status for s in proxy.requests(matches)]


def _upload_step(key: str, step: str) -> Matches:
    """A request to `key` of one step of an upload: `put` (one PUT), `begin`, `part` or
    `complete` (a multipart upload)."""
    method, marker = {
        "put": ("PUT", ""),
        "begin": ("POST", "uploads"),
        "part": ("PUT", "partNumber="),
        "complete": ("POST", "uploadId="),
    }[step]

    def matches(s: Seen) -> bool:
        path, _, query = s.path.partition("?")
        return s.method == method and path.endswith(f"/{key}") and marker in query

    return matches


@pytest.mark.parametrize("how", ["whole", "ranged", "stream"])
def test_reads_retry_5xx_answers(
    s3_server: S3Server, proxy: S3Proxy, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, how: str
) -> None:
    """A small object read whole, a large one in ranged parts, one streamed (Pipe mode)."""
    monkeypatch.setattr(ranged, "RANGED_MIN_SIZE", MiB)  # 3 MiB is large, in parts of 1 MiB
    monkeypatch.setattr(ranged, "PART_SIZE", MiB)
    data = os.urandom(300_000 if how == "whole" else 3 * MiB)
    s3_server.client().put_object(Bucket=BUCKET, Key=how, Body=data)
    proxy.add(Fault(object_get(how), times=2, status=503))
    proxy.add(Fault(object_get(how), times=1, status=500))
    location = resolve(f"s3://{BUCKET}/{how}", load_settings().store)

    async def read() -> bytes:
        if how == "stream":
            return b"".join(
                [c async for c in stream_object(location.store, location.key, len(data))]
            )
        target = tmp_path / how
        await download_all([Download(location.store, location.key, len(data), target)])
        return target.read_bytes()

    assert asyncio.run(read()) == data
    statuses = _statuses(proxy, object_get(how))
    assert statuses[:3] == [503, 503, 500]  # answered with errors, then retried
    assert set(statuses[3:]) <= {200, 206} and len(statuses) == (6 if how == "ranged" else 4)


def test_a_large_objects_parts_come_on_kept_connections(
    s3_server: S3Server, proxy: S3Proxy, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Each stream asks for part after part on its one connection (keep-alive): a connection
    per part left the streams idle while it was made."""
    monkeypatch.setattr(ranged, "RANGED_MIN_SIZE", MiB)
    monkeypatch.setattr(ranged, "PART_SIZE", 256 * 1024)
    data = os.urandom(4 * MiB)
    s3_server.client().put_object(Bucket=BUCKET, Key="kept", Body=data)
    location = resolve(f"s3://{BUCKET}/kept", load_settings().store)
    target = tmp_path / "kept"
    asyncio.run(download_all([Download(location.store, location.key, len(data), target)]))
    assert target.read_bytes() == data
    gets = proxy.requests(object_get("kept"))
    assert len(gets) >= 16 and len({s.peer for s in gets}) <= ranged.STREAMS


def test_a_single_put_retries_5xx_answers(proxy: S3Proxy, tmp_path: Path) -> None:
    source = tmp_path / "small.bin"
    source.write_bytes(os.urandom(MiB))
    proxy.add(Fault(_upload_step("small", "put"), times=2, status=503))
    proxy.add(Fault(_upload_step("small", "put"), times=1, status=500))
    asyncio.run(upload_file(source, resolve(f"s3://{BUCKET}/small", load_settings().store)))
    assert get_object(f"s3://{BUCKET}/small") == source.read_bytes()
    assert _statuses(proxy, _upload_step("small", "put")) == [503, 503, 500, 200]


def test_a_multipart_upload_retries_5xx_answers_at_every_step(
    proxy: S3Proxy, tmp_path: Path
) -> None:
    source = tmp_path / "large.bin"
    source.write_bytes(os.urandom(SINGLE_PUT_LIMIT + MiB))  # two parts
    for step in ("begin", "part", "complete"):
        proxy.add(Fault(_upload_step("large", step), times=2, status=503))
    asyncio.run(upload_file(source, resolve(f"s3://{BUCKET}/large", load_settings().store)))
    assert get_object(f"s3://{BUCKET}/large") == source.read_bytes()
    assert _statuses(proxy, _upload_step("large", "begin")) == [503, 503, 200]
    assert _statuses(proxy, _upload_step("large", "part")) == [503, 503, 200, 200]
    assert _statuses(proxy, _upload_step("large", "complete")) == [503, 503, 200]


def test_a_job_gets_its_data_and_writes_its_model_through_5xx_answers(
    s3_server: S3Server, proxy: S3Proxy, tmp_path: Path
) -> None:
    data = os.urandom(200_000)
    s3_server.client().put_object(Bucket=BUCKET, Key="train/x.bin", Body=data)
    proxy.add(Fault(object_get("train/x.bin"), times=3, status=503))
    model = _upload_step("job-5xx/output/model.tar.gz", "put")
    proxy.add(Fault(model, times=3, status=500))
    script = (
        f"#!{sys.executable}\nimport hashlib, shutil\n"
        "x = '/opt/ml/input/data/train/x.bin'\n"
        "print(hashlib.sha256(open(x, 'rb').read()).hexdigest())\n"
        "shutil.copy(x, '/opt/ml/model/x.bin')\n"
    )
    image = make_image(tmp_path / "image", script)
    jobs = TrainingJobs()
    channels = {"train": f"s3://{BUCKET}/train"}
    with stopped_at_the_end(jobs, "job-5xx"):
        jobs.create(request("job-5xx", str(image), f"s3://{BUCKET}/out", channels))
        description = wait_for(jobs, "job-5xx")
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    assert log_text(jobs, "job-5xx") == hashlib.sha256(data).hexdigest()
    archive = get_object(description["ModelArtifacts"]["S3ModelArtifacts"])
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        member = tar.extractfile("x.bin")
        assert member is not None and member.read() == data
    assert _statuses(proxy, object_get("train/x.bin"))[:3] == [503, 503, 503]
    assert _statuses(proxy, model) == [500, 500, 500, 200]


@pytest.mark.parametrize("size", [MiB, 64 * MiB], ids=["one-stream", "ranged-parts"])
def test_a_stop_ends_a_job_whose_download_waits_on_a_server_that_never_answers(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """The server takes the connection and says nothing (the requests would wait minutes for
    their timeout): the stop still ends the job, and every process of it."""
    root = tmp_path / "s3root"
    # Sparse: costs no disk, and is on the server before it lists its folder.
    (root / BUCKET / "hang").mkdir(parents=True)
    with open(root / BUCKET / "hang" / "x.bin", "wb") as blob:
        blob.truncate(size)
    server = RestartableS3Server(root)
    server.start()
    silent = S3Proxy(server.server.url)
    try:
        for name, value in {**server.server.env(), "AWS_ENDPOINT_URL_S3": silent.url}.items():
            monkeypatch.setenv(name, value)
        silent.add(Fault(object_get("hang/x.bin"), times=1000, silent=True))
        image = make_image(tmp_path / "image", "#!/bin/sh\necho never\n")
        jobs = TrainingJobs()
        channels = {"train": f"s3://{BUCKET}/hang"}
        with stopped_at_the_end(jobs, "hang"):
            jobs.create(request("hang", str(image), f"s3://{BUCKET}/out", channels))
            wait_until(lambda: silent.requests(object_get("hang/x.bin")), "a GET of the object")
            worker = worker_pid(jobs, "hang")
            assert worker is not None
            jobs.stop("hang")
            # Well within the requests' own timeout (300 s), generous for a loaded machine.
            description = wait_for(jobs, "hang", timeout=60)
        assert description["TrainingJobStatus"] == "Stopped", description.get("FailureReason")
        assert "never" not in log_text(jobs, "hang")
        wait_for_no_processes("hang", timeout=60)
        wait_until(lambda: process_lost(worker), "the job's worker to end", timeout=60)
    finally:
        silent.close()
        server.stop()
