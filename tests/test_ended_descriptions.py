"""An ended job's kept description (openmaker/jobs/ended.py, what the API answers Describe
with on its event loop) is given only while the job's row still says what it said when the
description was built."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from openmaker.jobs.db import TrainingJob, writer_sessions
from openmaker.jobs.ended import EndedDescriptions
from openmaker.settings import Settings
from openmaker.training import state

AT = datetime(2026, 1, 1, 12, 0, 0, 123000, tzinfo=UTC)


def _home(tmp_path: Path, status: str) -> tuple[Settings, EndedDescriptions]:
    settings = Settings(home=tmp_path / "home")
    with writer_sessions(settings)() as session:
        session.add(
            TrainingJob(
                name="job",
                arn="arn:aws:sagemaker:us-east-1:000000000000:training-job/job",
                request={},
                status=status,
                secondary_status=status,
                transitions=[],
                creation_time=AT,
                last_modified_time=AT,
            )
        )
        session.commit()
    kept = EndedDescriptions(
        settings.database_url, TrainingJob.__tablename__, frozenset(state.TERMINAL)
    )
    return settings, kept


def test_a_kept_description_goes_once_its_row_changes(tmp_path: Path) -> None:
    settings, kept = _home(tmp_path, "Completed")
    described = {"TrainingJobName": "job", "TrainingJobStatus": "Completed"}
    kept.keep("job", "Completed", AT, described)
    assert kept.get("job") is described
    with writer_sessions(settings)() as session:
        job = session.get(TrainingJob, "job")
        assert job is not None
        job.failure_reason = "changed behind the kept description"
        job.last_modified_time = AT + timedelta(milliseconds=1)
        session.commit()
    assert kept.get("job") is None


def test_a_kept_description_goes_with_its_row(tmp_path: Path) -> None:
    settings, kept = _home(tmp_path, "Failed")
    kept.keep("job", "Failed", AT, {"TrainingJobName": "job"})
    with writer_sessions(settings)() as session:
        session.delete(session.get(TrainingJob, "job"))
        session.commit()
    assert kept.get("job") is None


def test_a_job_not_ended_is_not_kept(tmp_path: Path) -> None:
    _, kept = _home(tmp_path, "InProgress")
    kept.keep("job", "InProgress", AT, {"TrainingJobName": "job"})
    assert kept.get("job") is None
