"""`openmaker jobs list`'s own reader (openmaker/training/list_view.py) answers what the service
answers, reads the service's table, and steps aside whenever the service's sweep could change
the answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from openmaker.jobs.db import TrainingJob, writer_sessions
from openmaker.settings import Settings, load_settings
from openmaker.training import list_view
from openmaker.training.service import TrainingJobs
from tests.helpers import request

SHOWN = ("TrainingJobName", "TrainingJobStatus", "CreationTime", "TrainingEndTime")


def _store(settings: Settings, statuses: list[str]) -> None:
    """Jobs written into the database as if run before: one per status, some at the same
    second (the name breaks the tie), every other one without an end time."""
    start = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    rows: list[dict[str, Any]] = []
    for index, status in enumerate(statuses):
        name = f"{'Alpha' if index % 2 else 'beta'}-{index:02d}"
        at = start + timedelta(seconds=index // 2, microseconds=index * 7)
        rows.append(
            {
                "name": name,
                "arn": f"arn:aws:sagemaker:us-east-1:000000000000:training-job/{name}",
                "request": request(name, "unused:image", "file:///unused"),
                "status": status,
                "secondary_status": status,
                "transitions": [],
                "creation_time": at,
                "last_modified_time": at,
                "training_end_time": at + timedelta(seconds=3) if index % 2 else None,
            }
        )
    with writer_sessions(settings)() as session:
        session.execute(insert(TrainingJob), rows)
        session.commit()


def _shown(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: job[k] for k in SHOWN if k in job} for job in jobs]


def test_the_reader_names_the_service_s_table_and_columns() -> None:
    assert TrainingJob.__tablename__ == list_view.TABLE
    assert set(list_view.COLUMNS) <= set(TrainingJob.__table__.columns.keys())


def test_ended_jobs_are_listed_as_the_service_lists_them(home: Path) -> None:
    settings = load_settings()
    TrainingJobs(settings).close()  # the database, made as every command makes it
    _store(settings, ["Completed", "Failed", "Stopped"] * 4)
    service = TrainingJobs(settings)
    for status, contains in [(None, None), ("Failed", None), (None, "ALPHA"), ("Stopped", "a-0")]:
        expected = _shown(service.list(status=status, name_contains=contains))
        assert expected, (status, contains)
        assert list_view.ended_jobs(settings, status, contains) == expected


def test_a_job_not_ended_leaves_the_answer_to_the_service(home: Path) -> None:
    settings = load_settings()
    assert list_view.ended_jobs(settings) == []  # no database yet: no job was ever made
    TrainingJobs(settings).close()
    assert list_view.ended_jobs(settings) == []
    _store(settings, ["Completed", "InProgress"])
    assert list_view.ended_jobs(settings) is None
    assert list_view.ended_jobs(settings, status="Completed") is None


def test_listing_ended_jobs_loads_neither_sqlalchemy_nor_pydantic(home: Path) -> None:
    settings = load_settings()
    TrainingJobs(settings).close()
    _store(settings, ["Completed", "Failed"])
    script = (
        "import json, sys\nfrom openmaker.cli.app import app\n"
        "app(['jobs', 'list'], standalone_mode=False)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True,
        env={**os.environ, "COLUMNS": "200"},
    ).stdout  # fmt: skip
    table, _, modules = out.rpartition("\n[")
    assert "beta-00" in table and "Alpha-01" in table
    loaded = json.loads("[" + modules)
    assert "sqlalchemy" not in loaded
    assert "openmaker.training.service" not in loaded
    # typer 0.29 builds a pydantic validator for every option at each start (pyproject.toml).
    assert "pydantic" not in loaded
