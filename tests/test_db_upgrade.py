"""A database made by the first release (before retries, capacity, tags and metrics) still
works: the columns added since are added to it, its jobs are described and listed."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
from pathlib import Path

from openmaker.jobs.executor import process_start_time
from openmaker.training.service import TrainingJobs
from tests.helpers import request

# The training_jobs table as the first release (commit 8672001) created it.
FIRST_RELEASE_TABLE = """
CREATE TABLE training_jobs (
    name VARCHAR(63) NOT NULL, arn VARCHAR(256) NOT NULL, request JSON NOT NULL,
    status VARCHAR(16) NOT NULL, secondary_status VARCHAR(32) NOT NULL,
    transitions JSON NOT NULL, failure_reason TEXT, model_artifacts VARCHAR(1024),
    creation_time DATETIME NOT NULL, last_modified_time DATETIME NOT NULL,
    training_start_time DATETIME, training_end_time DATETIME, worker_pid INTEGER,
    worker_ready BOOLEAN NOT NULL, stop_requested VARCHAR(32), progress JSON,
    PRIMARY KEY (name)
)
"""


def test_a_first_release_database_is_upgraded_in_place(home: Path) -> None:
    home.mkdir(parents=True)
    old = sqlite3.connect(home / "openmaker.db")
    old.execute(FIRST_RELEASE_TABLE)
    body = request("old-job", "/nowhere", "s3://bkt/out")
    old.execute(
        "INSERT INTO training_jobs VALUES (?, ?, ?, 'Completed', 'Completed', '[]', NULL, NULL,"
        " '2026-11-01 10:00:00.000000', '2026-11-01 10:05:00.000000', NULL, NULL, NULL, 1,"
        " NULL, NULL)",
        (
            "old-job",
            "arn:aws:sagemaker:us-east-1:000000000000:training-job/old-job",
            json.dumps(body),
        ),
    )
    old.commit()
    old.close()

    jobs = TrainingJobs()
    described = jobs.describe("old-job")
    assert described["TrainingJobStatus"] == "Completed"
    assert [j["TrainingJobName"] for j in jobs.list()] == ["old-job"]
    columns = {row[1] for row in sqlite3.connect(home / "openmaker.db").execute(
        "PRAGMA table_info(training_jobs)"
    )}  # fmt: skip
    assert {"worker", "attempts", "placement"} <= columns


AT = "2026-11-01T10:00:00+00:00"


def _old_job(name: str, status: str, pid: int, started: int | None) -> dict[str, object]:
    return {
        "name": name,
        "arn": f"arn:aws:sagemaker:us-east-1:000000000000:training-job/{name}",
        "request": json.dumps(request(name, "/nowhere", "s3://bkt/out")),
        "status": status,
        "secondary_status": "Training",
        "transitions": json.dumps(
            [{"Status": "Training", "StartTime": AT, "StatusMessage": "Training"}]
        ),
        "creation_time": "2026-11-01 10:00:00.000000",
        "last_modified_time": "2026-11-01 10:05:00.000000",
        "worker_pid": pid,
        "worker_started": started,
        "worker_ready": 1,
    }


def test_a_job_whose_worker_an_earlier_release_recorded_by_pid_is_still_watched(
    home: Path,
) -> None:
    """Jobs recorded with `worker_pid` (before workers were named by reference): a worker
    still running is left running and stopped on request, one that is gone is seen lost."""
    home.mkdir(parents=True)
    old = sqlite3.connect(home / "openmaker.db")
    old.execute(FIRST_RELEASE_TABLE)
    old.execute("ALTER TABLE training_jobs ADD COLUMN worker_started BIGINT")
    gone = subprocess.Popen(["true"])
    gone.wait()
    running = subprocess.Popen(["sleep", "600"])
    try:
        for job in (
            _old_job("running", "InProgress", running.pid, process_start_time(running.pid)),
            _old_job("gone", "InProgress", gone.pid, None),
        ):
            columns = ", ".join(job)
            old.execute(
                f"INSERT INTO training_jobs ({columns}) VALUES ({', '.join('?' * len(job))})",
                tuple(job.values()),
            )
        old.commit()
        old.close()

        jobs = TrainingJobs()  # upgrades, then sweeps
        assert jobs.describe("running")["TrainingJobStatus"] == "InProgress"
        lost = jobs.describe("gone")
        assert lost["TrainingJobStatus"] == "Failed"
        assert f"(process {gone.pid}) ended without finishing it" in lost["FailureReason"]
        jobs.stop("running")
        assert running.wait(timeout=30) == -signal.SIGTERM
    finally:
        running.kill()
        running.wait()
