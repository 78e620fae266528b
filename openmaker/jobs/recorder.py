"""Turning a job's host events into database rows, from one writer thread.

The database layer (SQLAlchemy) is imported by the writer thread, not at start: it is most of a
worker's start-up time, and the hosts can prepare and start the code meanwhile. Their events
wait in the queue with the times they happened.
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from openmaker.config import Settings
from openmaker.host.events import Event, LogLine, MetricSample, StatusChanged, TransferProgress
from openmaker.jobs import state
from openmaker.jobs.logs import LOG_GROUP, stream_name

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from openmaker.jobs.db import TrainingJob


class JobRecorder:
    """Turns host events into database rows; one writer thread, commits in small batches."""

    def __init__(self, settings: Settings, job_name: str) -> None:
        self.settings = settings
        self.sessions: sessionmaker[Session] | None = None  # set by the writer thread
        self.job_name = job_name
        self.queue: queue.Queue[Event | _Flush | None] = queue.Queue()
        self.streams: dict[str, str] = {}
        self.thread = threading.Thread(target=self._write, daemon=True)
        self.thread.start()

    def emit(self, event: Event) -> None:
        self.queue.put(event)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()

    def update(self, change: Callable[[TrainingJob], None]) -> TrainingJob:
        """Apply `change(job)` to the job row now, after the queued events; returns the row."""
        from openmaker.jobs.db import TrainingJob

        self.flush()
        assert self.sessions is not None
        with self.sessions() as session:
            job = session.get(TrainingJob, self.job_name)
            assert job is not None, f"job {self.job_name} is not in the database"
            change(job)
            session.commit()
        return job

    def flush(self) -> None:
        done = threading.Event()
        self.queue.put(_Flush(done))
        while not done.wait(0.5):
            if not self.thread.is_alive():
                # Never wait forever: the worker then ends, and the job is seen as lost.
                raise RuntimeError("the job's database writer stopped")

    def _write(self) -> None:
        from openmaker.jobs.db import TrainingJob, writer_sessions

        self.sessions = writer_sessions(self.settings)
        while True:
            batch = [self.queue.get()]
            while not self.queue.empty() and len(batch) < 500:
                batch.append(self.queue.get_nowait())
            try:
                with self.sessions() as session:
                    job = session.get(TrainingJob, self.job_name)
                    for event in batch:
                        if event is None or isinstance(event, _Flush):
                            continue
                        self._apply(session, job, event)
                    session.commit()
            except Exception:  # a lost batch of events must not stop the job or its end
                traceback.print_exc()
            for event in batch:
                if isinstance(event, _Flush):
                    event.done.set()
            if None in batch:  # closed
                return

    def _apply(self, session: Session, job: TrainingJob, event: Event) -> None:
        from openmaker.jobs.db import LogEvent, LogStream, MetricValue

        if isinstance(event, LogLine):
            name = self.streams.get(event.host)
            if name is None:
                name = stream_name(self.job_name, event.host, event.timestamp_ms // 1000)
                self.streams[event.host] = name
                # A restarted job's new attempt may start within the same second: one stream.
                if session.get(LogStream, name) is None:
                    session.add(
                        LogStream(
                            name=name,
                            group=LOG_GROUP,
                            job_name=self.job_name,
                            creation_time=event.timestamp_ms,
                        )
                    )
                    session.flush()
            session.add(
                LogEvent(
                    stream=name,
                    timestamp=event.timestamp_ms,
                    ingestion_time=int(time.time() * 1000),
                    message=event.message,
                )
            )
        elif isinstance(event, StatusChanged):
            if job.status == state.IN_PROGRESS:
                at = datetime.fromtimestamp(event.at, UTC)
                state.enter(job, event.status, event.message, at)
                if event.status == "Training" and job.training_start_time is None:
                    job.training_start_time = at
        elif isinstance(event, MetricSample):
            session.add(
                MetricValue(
                    job_name=self.job_name,
                    name=event.name,
                    timestamp=event.timestamp_ms,
                    value=event.value,
                )
            )
        elif isinstance(event, TransferProgress):
            job.progress = {
                "phase": event.phase,
                "done": event.done,
                "total": event.total,
                "seconds": event.seconds,
            }


class _Flush:
    def __init__(self, done: threading.Event) -> None:
        self.done = done
