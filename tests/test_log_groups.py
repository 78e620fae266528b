"""Every kind of job logs into the same tables: a read of one log group never returns another
group's events, whatever the streams asked for, even a stream of the same name (stream names
are unique within a group only, as on CloudWatch)."""

from __future__ import annotations

from pathlib import Path

import pytest

from openmaker.jobs.cloudwatch import LogQueries, Window
from openmaker.jobs.db import LogEvent, LogStream, writer_sessions
from openmaker.processing.recorder import ProcessingRecorder
from openmaker.resources import log_groups
from openmaker.settings import load_settings
from openmaker.training.recorder import TrainingRecorder
from openmaker.training.service import TrainingJobs

TRAINING = "/aws/sagemaker/TrainingJobs"
ENDPOINT = "/aws/sagemaker/Endpoints/shop"
PROCESSING = "/aws/sagemaker/ProcessingJobs"


@pytest.fixture
def queries(home: Path) -> LogQueries:
    settings = load_settings()
    with writer_sessions(settings)() as session:
        for group, stream, message in (
            (TRAINING, "job/algo-1-1", "training says hello"),
            (ENDPOINT, "AllTraffic/i-1", "endpoint says hello"),
        ):
            row = LogStream(name=stream, group=group, job_name=stream, creation_time=1)
            session.add(row)
            session.flush()
            session.add(LogEvent(stream_id=row.id, timestamp=1, ingestion_time=1, message=message))
        session.commit()
    return LogQueries.of(settings, log_groups())


def _messages(queries: LogQueries, group: str, streams: list[str] | None = None) -> list[str]:
    found = queries.filter_log_events(group, streams, None, Window(None, None))
    return [event["message"] for event in found["events"]]


def test_filtering_a_group_sees_only_its_own_events(queries: LogQueries) -> None:
    assert _messages(queries, TRAINING) == ["training says hello"]
    assert _messages(queries, ENDPOINT) == ["endpoint says hello"]
    # Naming another group's stream reads nothing of it.
    assert _messages(queries, TRAINING, ["AllTraffic/i-1"]) == []
    assert _messages(queries, TRAINING, ["job/algo-1-1", "AllTraffic/i-1"]) == [
        "training says hello"
    ]


def test_a_training_and_a_processing_job_of_one_name_keep_their_own_streams(home: Path) -> None:
    """Both start their host in the same second: both streams are `same/algo-1-<epoch>`."""
    settings = load_settings()
    when = 1_780_000_000_000
    recorders = ((TrainingRecorder, "training line"), (ProcessingRecorder, "processing line"))
    for kind, said in recorders:
        recorder = kind(settings, "same")
        recorder.lines("algo-1", when, [said], len(said))
        recorder.close()
    queries = LogQueries.of(settings, log_groups())
    stream = f"same/algo-1-{when // 1000}"
    for group, said in ((TRAINING, "training line"), (PROCESSING, "processing line")):
        described = queries.describe_log_streams(group)["logStreams"]
        assert [s["logStreamName"] for s in described] == [stream]
        assert f"log-group:{group}:log-stream:{stream}" in described[0]["arn"]
        got = queries.get_log_events(group, stream, Window(), from_head=True)
        assert [e["message"] for e in got["events"]] == [said]
        assert _messages(queries, group) == [said]
        assert _messages(queries, group, [stream]) == [said]
    # What the CLI and the console read of the training job.
    jobs = TrainingJobs(settings)
    assert jobs.log_streams("same") == [stream]
    assert [(e.stream, e.message) for e in jobs.iter_log_events("same")] == [
        (stream, "training line")
    ]
