"""A lost worker (`kill -9`) of a batch transform or processing job, against a real
`openmaker server`: the transform job starts again on a new worker with new instances (its
outputs are put only whole, so transforming again is safe); the processing job fails, saying
its worker ended without finishing it (processing has no retry)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from openmaker.jobs.executor import local_process
from openmaker.runtime import unavailable_reason
from tests.apiserver import ApiServer
from tests.process_helpers import kill, wait_until
from tests.test_processing import SLOW_SCRIPT, image, processing_request, s3_output, unique
from tests.test_processing import stop_all as stop_processing
from tests.test_transform import Transforms

pytestmark = pytest.mark.skipif(
    unavailable_reason() is not None, reason="these jobs need the bwrap sandbox"
)


def _worker(home: Path, table: str, name: str) -> tuple[str | None, bool]:
    """The job's worker reference and whether it took the job over, as its row says."""
    with contextlib.closing(sqlite3.connect(home / "openmaker.db", timeout=30)) as database:
        row = database.execute(
            f"SELECT worker, worker_ready FROM {table} WHERE name = ?", (name,)
        ).fetchone()
    return (row[0], bool(row[1])) if row else (None, False)


def _kill_worker(home: Path, table: str, name: str) -> str:
    reference, _ = _worker(home, table, name)
    assert reference is not None
    process = local_process(reference)
    assert process is not None
    kill(process[0])
    return reference


@pytest.fixture
def transforms(api_server: ApiServer, tmp_path: Path) -> Iterator[Transforms]:
    made = Transforms(api_server, tmp_path)
    try:
        yield made
    finally:
        made.stop_all()


def test_a_transform_job_whose_worker_is_killed_starts_again(transforms: Transforms) -> None:
    server = transforms.server
    # The container holds the `slow` request for ever: the worker is killed mid-transform.
    prefix = transforms.inputs({"a.csv": "1,2\nslow\n"})
    name = transforms.create(transforms.model(), prefix)
    logs = server.client("logs")
    group = "/aws/sagemaker/TransformJobs"

    def streams() -> list[str]:
        found = logs.describe_log_streams(logGroupName=group, logStreamNamePrefix=f"{name}/")
        return [s["logStreamName"] for s in found["logStreams"]]

    def posted(stream: str) -> bool:
        events = logs.get_log_events(logGroupName=group, logStreamName=stream)["events"]
        return any("request of" in e["message"] for e in events)

    wait_until(lambda: streams() and posted(streams()[0]), "the first request to be posted")
    first = _kill_worker(server.home, "transform_jobs", name)

    # Describing the job finds its worker gone: it is restarted on a new worker, with a new
    # instance (its own log stream), which is posted the object again.
    def restarted() -> bool:
        described = transforms.sagemaker.describe_transform_job(TransformJobName=name)
        assert described["TransformJobStatus"] == "InProgress", described.get("FailureReason")
        worker, ready = _worker(server.home, "transform_jobs", name)
        return ready and worker != first and len(streams()) == 2

    wait_until(restarted, "the job to start again on a new worker")
    wait_until(lambda: all(posted(s) for s in streams()), "the object to be posted again")
    transforms.sagemaker.stop_transform_job(TransformJobName=name)
    assert transforms.wait(name)["TransformJobStatus"] == "Stopped"


def test_a_processing_job_whose_worker_is_killed_fails_saying_so(
    api_server: ApiServer, tmp_path: Path
) -> None:
    sagemaker = api_server.client("sagemaker")
    bucket = unique("lost")
    api_server.client("s3").create_bucket(Bucket=bucket)
    name = unique("lost")
    request = processing_request(
        name,
        image(tmp_path, SLOW_SCRIPT),
        outputs=[s3_output("live", f"s3://{bucket}/live", "/opt/ml/processing/live")],
    )
    sagemaker.create_processing_job(**request)
    try:
        wait_until(
            lambda: _worker(api_server.home, "processing_jobs", name)[1],
            "the worker to take the job over",
        )
        _kill_worker(api_server.home, "processing_jobs", name)

        def failed() -> bool:
            described = sagemaker.describe_processing_job(ProcessingJobName=name)
            return bool(described["ProcessingJobStatus"] == "Failed")

        wait_until(failed, "the job to fail")
        reason = sagemaker.describe_processing_job(ProcessingJobName=name)["FailureReason"]
        assert reason.startswith("InternalServerError: the openmaker worker running the job")
        assert "ended without finishing it" in reason
    finally:
        stop_processing(sagemaker, [name])
