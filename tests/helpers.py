"""Building requests, images and data for tests, and waiting for jobs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import obstore

from openmaker.jobs.db import TrainingJob
from openmaker.jobs.executor import process_lost
from openmaker.settings import load_settings
from openmaker.shapes.errors import ResourceNotFound, ValidationException
from openmaker.store import resolve
from openmaker.training.service import TrainingJobs
from openmaker.training.state import TERMINAL
from tests.process_helpers import pid_of


def unique_name(prefix: str) -> str:
    """A job name no other test session on the machine uses at the same time: what finds a
    job's processes by its name (tests/process_helpers.py) finds this job's alone."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def make_image(folder: Path, train_script: str) -> Path:
    """A bring-your-own-container image: a folder with an executable `train`."""
    folder.mkdir(parents=True, exist_ok=True)
    program = folder / "train"
    program.write_text(train_script)
    program.chmod(0o755)
    return folder


def request(
    name: str,
    image: str,
    output: str,
    channels: dict[str, str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "TrainingJobName": name,
        "RoleArn": "arn:aws:iam::123456789012:role/SageMakerRole",
        "AlgorithmSpecification": {"TrainingImage": image, "TrainingInputMode": "File"},
        "OutputDataConfig": {"S3OutputPath": output},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 5},
        "StoppingCondition": {"MaxRuntimeInSeconds": 600},
    }
    if channels:
        body["InputDataConfig"] = [
            {
                "ChannelName": channel,
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": uri,
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
            }
            for channel, uri in channels.items()
        ]
    body.update(extra)
    return body


def put_objects(objects: dict[str, bytes]) -> None:
    """Write objects (by full URI) through openmaker's own store resolution."""

    async def put_all() -> None:
        settings = load_settings()
        for uri, data in objects.items():
            location = resolve(uri, settings.store)
            await obstore.put_async(location.store, location.key, data)

    asyncio.run(put_all())


def get_object(uri: str) -> bytes:
    location = resolve(uri, load_settings().store)
    return bytes(obstore.get(location.store, location.key).bytes())


def wait_for(
    jobs: TrainingJobs, name: str, timeout: float = 120, poll: float = 0.1
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        description = jobs.describe(name)
        if description["TrainingJobStatus"] in TERMINAL:
            return description
        time.sleep(poll)
    raise AssertionError(f"job {name} did not end in {timeout} s: {jobs.describe(name)}")


def stop_and_wait(jobs: TrainingJobs, names: Iterable[str], timeout: float = 120) -> None:
    """Stop each job of `names` that has not ended (or was never made) and wait for each to
    end: what a test that starts jobs runs in `finally`, so that none is left looping."""
    names = list(names)
    for name in names:
        with contextlib.suppress(ValidationException, ResourceNotFound):  # ended, or never made
            jobs.stop(name)
    for name in names:
        with contextlib.suppress(ResourceNotFound):
            wait_for(jobs, name, timeout)


@contextlib.contextmanager
def stopped_at_the_end(jobs: TrainingJobs, name: str) -> Iterator[None]:
    """A job that a failed assertion left running is stopped, not left behind."""
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            if jobs.describe(name)["TrainingJobStatus"] not in TERMINAL:
                jobs.stop(name)
                wait_for(jobs, name, timeout=60)


# The tables of every kind of job: their rows name the worker that runs each (jobs/executor.py).
_WORKER_TABLES = ("training_jobs", "endpoints", "processing_jobs", "transform_jobs")


def kill_every_worker(home: Path) -> None:
    """Kill the workers that the jobs of `home` name, of every kind: endpoints' and others'
    workers outlive the server that started them, by design, and must not outlive a test."""
    database = home / "openmaker.db"
    if not database.exists():
        return
    with contextlib.closing(sqlite3.connect(database, timeout=30)) as connection:
        references = [
            row[0]
            for table in _WORKER_TABLES
            for row in connection.execute(f"SELECT worker FROM {table} WHERE worker IS NOT NULL")
        ]
    for reference in references:
        _, pid, *started = reference.split(":")
        if process_lost(int(pid), int(started[0]) if started else None):
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def end_every_job(grace: float = 15) -> None:
    """Stop every job of this OPENMAKER_HOME that has not ended, as a fixture's teardown does
    after a test that failed midway; a job still running `grace` seconds later (its code
    ignoring SIGTERM through a long grace period) has its worker killed, its sandbox with it."""
    jobs = TrainingJobs()
    running = [
        job["TrainingJobName"] for job in jobs.list() if job["TrainingJobStatus"] not in TERMINAL
    ]
    for name in running:
        with contextlib.suppress(ValidationException, ResourceNotFound):
            jobs.stop(name)
    deadline = time.monotonic() + grace
    for name in running:
        while jobs.describe(name)["TrainingJobStatus"] not in TERMINAL:
            if time.monotonic() > deadline:
                with jobs.sessions() as session:
                    job = session.get(TrainingJob, name)
                    pid = pid_of(job)
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                wait_for(jobs, name, timeout=30)
                break
            time.sleep(0.1)


def wait_for_secondary_status(
    jobs: TrainingJobs, name: str, status: str, timeout: float = 60
) -> None:
    """Wait until the job's SecondaryStatus is `status` (a phase: Downloading, Uploading, …)."""
    deadline = time.monotonic() + timeout
    while (now := jobs.describe(name)["SecondaryStatus"]) != status:
        assert time.monotonic() < deadline, f"{name} never reached {status}: {now}"
        time.sleep(0.05)


def stored_job(jobs: TrainingJobs, name: str) -> TrainingJob:
    """The stored job, read without describing it (describing would recover it itself)."""
    with jobs.sessions() as session:
        job = session.get(TrainingJob, name)
        assert job is not None
        return job


def log_text(jobs: TrainingJobs, name: str) -> str:
    return "\n".join(record.message for record in jobs.iter_log_events(name))


def wait_for_log(jobs: TrainingJobs, name: str, text: str, timeout: float = 60) -> None:
    """Wait until `text` appears in the job's log lines."""
    deadline = time.monotonic() + timeout
    while text not in log_text(jobs, name):
        assert time.monotonic() < deadline, f"{text!r} never appeared in the logs of {name}"
        time.sleep(0.05)


def run_script(
    tmp_path: Path,
    name: str,
    script: str,
    output: str = "s3://b/out",
    channels: dict[str, str] | None = None,
    edit: Callable[[dict[str, Any]], None] | None = None,
    **extra: Any,
) -> tuple[TrainingJobs, dict[str, Any]]:
    """Run `script` as a bring-your-own-container job to its end: (the service, its description).

    `edit` changes the request before it is sent, for members deeper than the top level."""
    jobs = start_script(tmp_path, name, script, output, channels, edit, **extra)
    return jobs, wait_for(jobs, name)


def start_script(
    tmp_path: Path,
    name: str,
    script: str,
    output: str = "s3://b/out",
    channels: dict[str, str] | None = None,
    edit: Callable[[dict[str, Any]], None] | None = None,
    **extra: Any,
) -> TrainingJobs:
    """Start `script` as a job, as run_script does, without waiting for its end."""
    image = make_image(tmp_path / "image", script)
    jobs = TrainingJobs()
    body = request(name, str(image), output, channels, **extra)
    if edit is not None:
        edit(body)
    jobs.create(body)
    return jobs


def source_of(body: dict[str, Any], channel: int = 0) -> dict[str, Any]:
    """The S3DataSource of a channel of a request."""
    return body["InputDataConfig"][channel]["DataSource"]["S3DataSource"]
