"""Stored metric values as the metric APIs read them, in a database made before hosts and
system metrics were kept."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from openmaker.api.cloudwatch_metrics import CloudWatchMetrics
from openmaker.serving.metric_reads import EndpointMetricReads
from openmaker.training.metric_reads import MetricReads
from openmaker.training.service import TrainingJobs
from tests.test_db_upgrade import FIRST_RELEASE_TABLE

# metric_values as it was before each value named its host.
HOSTLESS_METRICS_TABLE = """
CREATE TABLE metric_values (
    id INTEGER NOT NULL, job_name VARCHAR(63) NOT NULL, name VARCHAR(255) NOT NULL,
    timestamp BIGINT NOT NULL, value FLOAT NOT NULL,
    PRIMARY KEY (id), FOREIGN KEY(job_name) REFERENCES training_jobs (name)
)
"""
AT = datetime(2026, 11, 1, 10, 0, 30, tzinfo=UTC)


def test_values_stored_before_hosts_were_kept_are_the_jobs(home: Path) -> None:
    home.mkdir(parents=True)
    old = sqlite3.connect(home / "openmaker.db")
    old.execute(FIRST_RELEASE_TABLE)
    old.execute(HOSTLESS_METRICS_TABLE)
    old.execute(
        "INSERT INTO training_jobs VALUES ('old-job', 'arn', '{}', 'Completed', 'Completed',"
        " '[]', NULL, NULL, '2026-11-01 10:00:00.000000', '2026-11-01 10:05:00.000000', NULL,"
        " NULL, NULL, 1, NULL, NULL)"
    )
    stamp = int(AT.timestamp() * 1000)
    old.executemany(
        "INSERT INTO metric_values (job_name, name, timestamp, value) VALUES (?, ?, ?, ?)",
        [("old-job", "loss", stamp, 3.0), ("old-job", "loss", stamp + 1000, 1.0)],
    )
    old.commit()
    old.close()

    jobs = TrainingJobs()
    metrics = CloudWatchMetrics(
        MetricReads(jobs.sessions), jobs.settings.account_id, EndpointMetricReads(jobs.sessions)
    )
    query = {
        "Namespace": "/aws/sagemaker/TrainingJobs",
        "MetricName": "loss",
        "StartTime": AT.replace(second=0),
        "EndTime": AT.replace(minute=5),
        "Period": 300,
        "Statistics": ["Sum", "SampleCount"],
    }
    by_job = metrics.get_metric_statistics(
        {**query, "Dimensions": [{"Name": "TrainingJobName", "Value": "old-job"}]}
    )
    [point] = by_job["Datapoints"]
    assert (point["Sum"], point["SampleCount"]) == (4.0, 2.0)
    assert point["Timestamp"] == AT.replace(second=0)
    # Whose they were is not known: no host claims them.
    by_host = metrics.get_metric_statistics(
        {**query, "Dimensions": [{"Name": "Host", "Value": "old-job/algo-1"}]}
    )
    assert by_host["Datapoints"] == []
    assert [m["Dimensions"] for m in metrics.list_metrics({})["Metrics"]] == [
        [{"Name": "TrainingJobName", "Value": "old-job"}]
    ]
