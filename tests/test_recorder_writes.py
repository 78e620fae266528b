"""A worker's recorder takes the database's write lock, which every worker and the server's
requests share, as seldom as it can: a flush with nothing queued writes nothing, and events
that pile up (while the lock is busy, or within a moment of each other) are written with the
change to the row that follows them in one transaction."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Connection

from openmaker.jobs.db import TrainingJob, engine_for, sessions
from openmaker.settings import load_settings
from openmaker.training.host.events import LogLine, StatusChanged
from openmaker.training.recorder import TrainingRecorder
from openmaker.training.service import TrainingJobs
from openmaker.training.status import SecondaryStatus
from tests.helpers import make_image, request
from tests.process_helpers import wait_until


def test_piled_up_events_and_the_change_after_them_take_the_write_lock_once(
    home: Path, tmp_path: Path
) -> None:
    settings = load_settings()
    image = str(make_image(tmp_path / "image", "#!/bin/sh\nexit 0\n"))
    TrainingJobs(settings, sweep=False)._create(request("rec-a", image, "s3://b/out"))
    writes: list[bool] = []

    def began(connection: Connection) -> None:
        writes.append(bool(connection.get_execution_options().get("openmaker_writer")))

    engine = engine_for(settings.database_url, settings.db_busy_seconds)
    event.listen(engine, "begin", began)
    recorder = TrainingRecorder(settings, "rec-a")
    blocker = sqlite3.connect(str(settings.database_file), isolation_level=None)
    try:
        recorder.flush()  # nothing queued: nothing to write
        assert writes.count(True) == 0
        # Another process holds the write lock (a worker, a create) while events come.
        blocker.execute("BEGIN IMMEDIATE")
        now = time.time()
        recorder.emit(StatusChanged(SecondaryStatus.DOWNLOADING, at=now))
        recorder.emit(StatusChanged(SecondaryStatus.TRAINING, at=now))
        recorder.emit(LogLine("algo-1", int(now * 1000), "hello"))
        done = threading.Thread(
            target=recorder.update, args=(lambda job: setattr(job, "failure_reason", "x"),)
        )
        done.start()
        # Every item ever queued (the flush, three events, the change), taken or not.
        wait_until(lambda: recorder.queue.unfinished_tasks == 5, "the change to be queued")
        blocker.execute("COMMIT")
        done.join()
    finally:
        blocker.close()
        recorder.close()
        event.remove(engine, "begin", began)
    # What the writer took before the lock came free, then all the rest: two at most.
    assert writes.count(True) <= 2
    with sessions(settings)() as session:
        job = session.get(TrainingJob, "rec-a")
        assert job is not None
        assert (job.secondary_status, job.failure_reason) == ("Training", "x")
