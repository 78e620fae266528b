"""`openmaker jobs list` read straight from SQLite, without SQLAlchemy or the job machinery.

Importing SQLAlchemy and the service alone takes longer than the command may (under 0.3 s).
This reader answers only when it can answer exactly as `TrainingJobs.list` would: when every
training job has ended, the sweep that service runs first (openmaker/jobs/recovery.py) can
change nothing the list shows; and when the database does not exist yet (no job was ever
created: the list is empty). Otherwise, or when anything about the database is unusual (an
empty file, another URL, an older schema, an error), it answers None and the caller takes the
service's path, which also says what is wrong. The names below are the columns of
`openmaker.jobs.db.TrainingJob` (tests/test_list_view.py holds them to that model).
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

from openmaker.home import prepare_home
from openmaker.settings import Settings
from openmaker.training.state import TERMINAL, as_utc

TABLE = "training_jobs"
COLUMNS = ("name", "status", "creation_time", "training_end_time")
BUSY_MILLISECONDS = 5000


def ended_jobs(
    settings: Settings, status: str | None = None, name_contains: str | None = None
) -> list[dict[str, Any]] | None:
    """The jobs matching, newest first, as the members of their ListTrainingJobs summaries
    the CLI shows; None when the service must answer (see above)."""
    prepare_home(settings.home)  # private, as every command keeps it (openmaker/home.py)
    if _database_absent(settings):
        return []  # no job was ever created in this home (a new machine)
    path = _database_file(settings)
    if path is None:
        return None
    try:
        connection = sqlite3.connect(path, timeout=BUSY_MILLISECONDS / 1000)
    except sqlite3.Error:
        return None
    try:
        return _read(connection, status, name_contains)
    except (sqlite3.Error, ValueError):
        return None
    finally:
        connection.close()


def _database_absent(settings: Settings) -> bool:
    path = settings.database_file
    return path is not None and not path.exists()


def _database_file(settings: Settings) -> Path | None:
    path = settings.database_file
    if path is None:
        return None
    try:
        if path.stat().st_size == 0:
            return None
    except OSError:
        return None
    return path


def _read(
    connection: sqlite3.Connection, status: str | None, name_contains: str | None
) -> list[dict[str, Any]] | None:
    ended = sorted(TERMINAL)
    marks = ", ".join("?" for _ in ended)
    # One read transaction: the check and the rows see the same state.
    connection.execute("BEGIN")
    running = connection.execute(
        f"SELECT EXISTS (SELECT 1 FROM {TABLE} WHERE status NOT IN ({marks}))", ended
    ).fetchone()[0]
    if running:
        return None
    query = f"SELECT {', '.join(COLUMNS)} FROM {TABLE}"
    arguments: list[str] = []
    if status:
        query += " WHERE status = ?"
        arguments.append(status)
    query += " ORDER BY creation_time DESC, name DESC"
    rows = connection.execute(query, arguments).fetchall()
    connection.rollback()
    found = []
    wanted = name_contains.lower() if name_contains else None
    for name, job_status, created, ended_at in rows:
        if wanted is not None and wanted not in name.lower():
            continue
        job: dict[str, Any] = {
            "TrainingJobName": name,
            "TrainingJobStatus": job_status,
            "CreationTime": _time(created),
        }
        if ended_at:
            job["TrainingEndTime"] = _time(ended_at)
        found.append(job)
    return found


def _time(stored: str) -> datetime:
    """SQLAlchemy keeps a DateTime in SQLite as ISO text, in UTC without a zone."""
    return as_utc(datetime.fromisoformat(stored))
