"""Every kind of job logs into the same tables: a read of one log group never returns another
group's events, whatever the streams asked for."""

from __future__ import annotations

from pathlib import Path

import pytest

from openmaker.jobs.cloudwatch import LogQueries, Window
from openmaker.jobs.db import LogEvent, LogStream, writer_sessions
from openmaker.resources import log_groups
from openmaker.settings import load_settings

TRAINING = "/aws/sagemaker/TrainingJobs"
ENDPOINT = "/aws/sagemaker/Endpoints/shop"


@pytest.fixture
def queries(home: Path) -> LogQueries:
    settings = load_settings()
    with writer_sessions(settings)() as session:
        for group, stream, message in (
            (TRAINING, "job/algo-1-1", "training says hello"),
            (ENDPOINT, "AllTraffic/i-1", "endpoint says hello"),
        ):
            session.add(LogStream(name=stream, group=group, job_name=stream, creation_time=1))
            session.add(LogEvent(stream=stream, timestamp=1, ingestion_time=1, message=message))
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
