"""Training jobs as the SageMaker API sees them: create, describe, list, stop, logs.

This is the one entry point the CLI (in-process) and the API server share.
"""

from __future__ import annotations

import contextlib
import copy
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from openmaker.config import Settings, load_settings
from openmaker.host.images import ImageError, resolve_image
from openmaker.jobs import state
from openmaker.jobs.db import LogEvent, LogStream, TrainingJob, sessions, writer_sessions
from openmaker.jobs.describe import describe, summary
from openmaker.jobs.executor import Executor, LocalExecutor
from openmaker.jobs.logs import LOG_GROUP
from openmaker.spec import (
    ResourceInUse,
    ResourceNotFound,
    ValidationException,
    check_create_training_job,
    default_stopping_condition,
    training_job_arn,
)


@dataclass(frozen=True)
class LogRecord:
    id: int
    stream: str
    timestamp: int
    message: str


class TrainingJobs:
    def __init__(self, settings: Settings | None = None, executor: Executor | None = None) -> None:
        self.settings = settings or load_settings()
        self.sessions = sessions(self.settings)
        self.writers = writer_sessions(self.settings)
        self.executor = executor or LocalExecutor(self.settings)

    def create(self, request: dict[str, Any]) -> dict[str, str]:
        check_create_training_job(request)
        _check_supported(request)
        request = copy.deepcopy(request)
        # SageMaker's default time limit applies when the request names none.
        request.setdefault("StoppingCondition", default_stopping_condition())
        name = request["TrainingJobName"]
        arn = training_job_arn(name, self.settings.region, self.settings.account_id)
        at = state.now()
        job = TrainingJob(
            name=name,
            arn=arn,
            request=request,
            status=state.IN_PROGRESS,
            secondary_status="Starting",
            transitions=[],
            creation_time=at,
            last_modified_time=at,
        )
        state.enter(job, "Starting")
        with self.writers() as session:
            session.add(job)
            try:
                session.commit()
            except IntegrityError:
                raise ResourceInUse(f"Training job {name} already exists") from None
        pid = self.executor.submit(arn, request)
        with self.writers() as session:
            # Recorded here as well as by the worker: a worker that dies while it starts is
            # then noticed too.
            session.execute(
                update(TrainingJob)
                .where(TrainingJob.name == name, TrainingJob.worker_pid.is_(None))
                .where(TrainingJob.status.not_in(state.TERMINAL))
                .values(worker_pid=pid)
            )
            session.commit()
        return {"TrainingJobArn": arn}

    def describe(self, name: str) -> dict[str, Any]:
        return describe(self._get(name))

    def list(
        self, status: str | None = None, name_contains: str | None = None
    ) -> list[dict[str, Any]]:
        query = select(TrainingJob).order_by(TrainingJob.creation_time.desc())
        if status:
            query = query.where(TrainingJob.status == status)
        if name_contains:
            query = query.where(TrainingJob.name.contains(name_contains))
        with self.sessions() as session:
            return [summary(job) for job in session.scalars(query)]

    def stop(self, name: str) -> None:
        with self.writers() as session:
            job = session.get(TrainingJob, name)
            if job is None:
                raise ResourceNotFound(f"Requested resource not found: training job {name}")
            if job.status in state.TERMINAL:
                raise ValidationException(
                    f"The request was rejected because the training job is in status {job.status}."
                )
            if job.status == state.STOPPING:
                return
            job.stop_requested = "Stopped"
            state.enter(job, "Stopping")
            # A worker not yet ready reads `stop_requested` when it gets ready: under the write
            # lock, one of the two always sees the other.
            pid = job.worker_pid if job.worker_ready else None
            session.commit()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def progress(self, name: str) -> dict[str, Any] | None:
        """The transfer under way: {"phase", "done", "total"} (bytes), or None."""
        with self.sessions() as session:
            query = select(TrainingJob.progress).where(TrainingJob.name == name)
            return session.scalar(query)

    def log_streams(self, name: str) -> list[str]:
        with self.sessions() as session:
            query = (
                select(LogStream.name).where(LogStream.job_name == name).order_by(LogStream.name)
            )
            return list(session.scalars(query))

    def log_events(self, name: str, after_id: int = 0, limit: int = 1000) -> list[LogRecord]:
        """The job's log lines in the order they were written, after the record `after_id`."""
        with self.sessions() as session:
            query = (
                select(LogEvent)
                .join(LogStream, LogStream.name == LogEvent.stream)
                .where(LogStream.job_name == name, LogStream.group == LOG_GROUP)
                .where(LogEvent.id > after_id)
                .order_by(LogEvent.id)
                .limit(limit)
            )
            return [
                LogRecord(e.id, e.stream, e.timestamp, e.message) for e in session.scalars(query)
            ]

    def iter_log_events(self, name: str) -> Iterator[LogRecord]:
        after = 0
        while batch := self.log_events(name, after):
            yield from batch
            after = batch[-1].id

    def _get(self, name: str) -> TrainingJob:
        with self.sessions() as session:
            job = session.get(TrainingJob, name)
        if job is None:
            raise ResourceNotFound(f"Requested resource not found: training job {name}")
        if (pid := _worker_of(job)) is not None and self.executor.lost(pid):
            job = self._fail_lost(name)
        return job

    def _fail_lost(self, name: str) -> TrainingJob:
        """A job must never stay InProgress with nothing running it."""
        with self.writers() as session:
            job = session.get(TrainingJob, name)
            assert job is not None
            pid = _worker_of(job)
            if pid is not None and self.executor.lost(pid):
                reason = (
                    f"InternalServerError: the openmaker worker running the job (process {pid}) "
                    "ended without finishing it"
                )
                state.finish(job, "Failed", reason)
                session.commit()
        return job


def _worker_of(job: TrainingJob) -> int | None:
    """The process that is supposed to be running the job, if one is."""
    return None if job.status in state.TERMINAL else job.worker_pid


def _check_supported(request: dict[str, Any]) -> None:
    """What SageMaker accepts but openmaker cannot run yet, refused before anything starts."""
    algorithm = request["AlgorithmSpecification"]
    try:
        resolve_image(algorithm["TrainingImage"], algorithm)
    except ImageError as exc:
        raise ValidationException(f"AlgorithmSpecification.TrainingImage: {exc}") from None
    default_mode = algorithm["TrainingInputMode"]
    for index, channel in enumerate(request.get("InputDataConfig") or [], start=1):
        if (channel.get("InputMode") or default_mode) == "Pipe":
            raise ValidationException(
                f"InputDataConfig.{index}.member.InputMode: channel {channel['ChannelName']!r} "
                "uses Pipe mode, which this version of openmaker does not run yet"
            )
