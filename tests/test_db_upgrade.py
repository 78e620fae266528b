"""A database made by the first release (before retries, capacity, tags and metrics) still
works: the columns added since are added to it, its jobs are described and listed, its logs
read."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
from pathlib import Path

from openmaker.jobs.cloudwatch import LogQueries, Window
from openmaker.jobs.executor import process_start_time
from openmaker.processing.recorder import ProcessingRecorder
from openmaker.resources import log_groups
from openmaker.settings import load_settings
from openmaker.shapes.paging import encode
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


# The log tables as every release before streams were keyed by (group, name) created them.
NAME_KEYED_LOG_TABLES = [
    """
    CREATE TABLE log_streams (
        name VARCHAR(512) NOT NULL, "group" VARCHAR(512) NOT NULL, job_name VARCHAR(63) NOT NULL,
        creation_time BIGINT NOT NULL, PRIMARY KEY (name),
        FOREIGN KEY(job_name) REFERENCES training_jobs (name)
    )
    """,
    'CREATE INDEX ix_log_streams_group ON log_streams ("group")',
    "CREATE INDEX ix_log_streams_job_name ON log_streams (job_name)",
    """
    CREATE TABLE log_events (
        id INTEGER NOT NULL, stream VARCHAR(512) NOT NULL, timestamp BIGINT NOT NULL,
        ingestion_time BIGINT NOT NULL, message TEXT NOT NULL, PRIMARY KEY (id),
        FOREIGN KEY(stream) REFERENCES log_streams (name)
    )
    """,
    "CREATE INDEX ix_log_events_stream_id ON log_events (stream, id)",
]
TRAINING_GROUP = "/aws/sagemaker/TrainingJobs"
ENDPOINT_GROUP = "/aws/sagemaker/Endpoints/shop"


def test_log_streams_named_across_groups_are_keyed_by_group_and_name(home: Path) -> None:
    """An old home's streams and events survive the upgrade, each event with its id (a client's
    token names one), and a stream of the same name can then be made in another group."""
    home.mkdir(parents=True)
    old = sqlite3.connect(home / "openmaker.db")
    old.execute(FIRST_RELEASE_TABLE)
    for statement in NAME_KEYED_LOG_TABLES:
        old.execute(statement)
    old.executemany(
        "INSERT INTO log_streams VALUES (?, ?, ?, 1)",
        [("job/algo-1-100", TRAINING_GROUP, "job"), ("AllTraffic/i-1", ENDPOINT_GROUP, "shop")],
    )
    old.executemany(
        "INSERT INTO log_events VALUES (?, ?, 1, 1, ?)",
        [
            (5, "job/algo-1-100", "first"),
            (6, "AllTraffic/i-1", "serving"),
            (9, "job/algo-1-100", "second"),
        ],
    )
    old.commit()
    old.close()

    jobs = TrainingJobs()  # upgrades
    assert [(e.id, e.stream, e.message) for e in jobs.iter_log_events("job")] == [
        (5, "job/algo-1-100", "first"),
        (9, "job/algo-1-100", "second"),
    ]
    logs = LogQueries.of(load_settings(), log_groups())
    after_first = encode("GetLogEvents", {"after": 5})
    page = logs.get_log_events(TRAINING_GROUP, "job/algo-1-100", Window(), token=after_first)
    assert [e["message"] for e in page["events"]] == ["second"]
    found = logs.filter_log_events(ENDPOINT_GROUP, None, None, Window())
    assert [(e["logStreamName"], e["message"]) for e in found["events"]] == [
        ("AllTraffic/i-1", "serving")
    ]

    recorder = ProcessingRecorder(load_settings(), "job")
    recorder.lines("algo-1", 100_000, ["processing"], 10)
    recorder.close()
    processing = logs.filter_log_events("/aws/sagemaker/ProcessingJobs", None, None, Window())
    assert [(e["logStreamName"], e["message"]) for e in processing["events"]] == [
        ("job/algo-1-100", "processing")
    ]
    assert [e.message for e in jobs.iter_log_events("job")] == ["first", "second"]
    tables = {row[0] for row in sqlite3.connect(home / "openmaker.db").execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'"
    )}  # fmt: skip
    assert not {"old_log_streams", "old_log_events"} & tables
