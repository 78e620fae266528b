"""Training jobs as the SageMaker API sees them: create, describe, list, stop, logs.

This is the one entry point the CLI (in-process) and the API server share.
"""

from __future__ import annotations

import builtins
import copy
import dataclasses
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from openmaker.jobs import capacity, queue, recovery
from openmaker.jobs.db import (
    LogEvent,
    LogStream,
    MetricValue,
    TrainingJob,
    sessions,
    writer_sessions,
)
from openmaker.jobs.ended import EndedDescriptions
from openmaker.jobs.executor import Executor, executor_for, local_reference
from openmaker.jobs.listing import search
from openmaker.jobs.logs import LogRecord
from openmaker.jobs.service import Stopping, current, insert, stop_job
from openmaker.resources import KINDS
from openmaker.settings import Settings, load_settings
from openmaker.shapes.arn import training_job_arn
from openmaker.shapes.errors import ResourceNotFound, ValidationException
from openmaker.shapes.locations import LocalPaths
from openmaker.shapes.training import check_create_training_job, default_stopping_condition
from openmaker.training import state
from openmaker.training.describe import describe, summary
from openmaker.training.kind import TRAINING
from openmaker.training.plan import ImageError, image_of
from openmaker.training.query import JobQuery
from openmaker.training.search import search as search_records
from openmaker.training.status import SecondaryStatus, TrainingJobStatus
from openmaker.training.update import update_training_job

log = logging.getLogger("openmaker.jobs")


class TrainingJobs:
    def __init__(
        self,
        settings: Settings | None = None,
        executor: Executor | None = None,
        local: LocalPaths | None = None,
        sweep: bool = True,
    ) -> None:
        """`sweep=False`: the caller sweeps when it chooses (the CLI: after its create, while
        the job starts, rather than before it)."""
        self.settings = settings or load_settings()
        # Which local paths requests may name: any for the owner's own process (the CLI).
        self.local = local or LocalPaths.anywhere()
        self.sessions = sessions(self.settings)
        self.writers = writer_sessions(self.settings)
        self._described = EndedDescriptions(
            self.settings.database_url, TrainingJob.__tablename__, frozenset(state.TERMINAL)
        )
        self.executor = executor or executor_for(self.settings)
        # The executor keeps one warm worker for the next job: what may start a worker (a
        # create, a stop, a sweep) does so one at a time.
        self._starting = threading.RLock()
        # A job waits to be started: whoever holds `_starting` starts it before letting go.
        self._wanted = threading.Event()
        self._closed = threading.Event()
        # Cheap, and the only way a job whose worker died with nobody watching moves on.
        if sweep:
            self.sweep()

    def sweep(self) -> None:
        """Act on jobs whose worker is gone, then start the waiting jobs that fit."""
        with self._starting:
            recovery.sweep(self.settings, self.executor, KINDS)
        self._start_wanted()

    def watch(self, every: float) -> None:
        """Sweep every `every` seconds in a background thread until `close`: a lost worker is
        noticed, and waiting jobs start, even when nobody asks about them (a server)."""

        def loop() -> None:
            while not self._closed.wait(every):
                try:
                    self.sweep()
                except Exception:  # the next sweep tries again; the process goes on
                    log.exception("sweeping the jobs failed")

        threading.Thread(target=loop, name="openmaker-sweep", daemon=True).start()

    def close(self) -> None:
        self._closed.set()

    def worker_lost(self, pid: int, started: int | None) -> bool:
        """Whether the worker process `pid` (started at `started`, when known) is gone: for
        what a worker left behind outside the job store (its job's S3 key)."""
        return self.executor.lost(local_reference(pid, started))

    def create(self, request: dict[str, Any]) -> dict[str, str]:
        created = self._create(request)
        # Creates at once do not queue behind each other's starts: one thread starts every
        # job created meanwhile (now, or when capacity frees).
        self._wanted.set()
        self._start_wanted()
        return created

    def _create(self, request: dict[str, Any]) -> dict[str, str]:
        if (request.get("AlgorithmSpecification") or {}).get("AlgorithmName") is not None:
            from openmaker.algorithms.training import apply_algorithm  # few jobs name one

            request = apply_algorithm(request, self.settings, self.local)
        check_create_training_job(request, self.local)
        _check_supported(request)
        kind = TRAINING
        capacity.check_can_fit(kind.instances(request), capacity.machine(self.settings), kind.noun)
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
            status=TrainingJobStatus.IN_PROGRESS,
            secondary_status=SecondaryStatus.STARTING,
            transitions=[],
            creation_time=at,
            last_modified_time=at,
        )
        state.enter(job, SecondaryStatus.STARTING)
        insert(self.writers, kind, job, request.get("Tags") or [])
        queue.save_launch(self.settings, TRAINING.local_key(name))
        return {"TrainingJobArn": arn}

    def describe(self, name: str) -> dict[str, Any]:
        job = self._get(name)
        result = describe(job)
        # Metric values are found by the job's MetricDefinitions alone: without any, there
        # are none to look up (a query that was half of a describe's time).
        if job.request["AlgorithmSpecification"].get("MetricDefinitions"):
            if metrics := self.final_metrics(name):
                result["FinalMetricDataList"] = metrics
        else:
            # Kept only without metrics: the recorder's last values may land after the end.
            self._described.keep(name, job.status, job.last_modified_time, copy.deepcopy(result))
        return result

    def describe_ended(self, name: str) -> dict[str, Any] | None:
        """What `describe` answered for job `name` once it had ended, while its row still says
        so; None: ask `describe`. Quick enough to run on a server's event loop."""
        return self._described.get(name)

    def final_metrics(self, name: str) -> list[dict[str, Any]]:
        """The last value of each metric the job's MetricDefinitions found, by name."""
        last = (
            select(func.max(MetricValue.id))
            .where(MetricValue.job_name == name)
            .group_by(MetricValue.name)
        )
        query = select(MetricValue).where(MetricValue.id.in_(last)).order_by(MetricValue.name)
        with self.sessions() as session:
            return [
                {
                    "MetricName": m.name,
                    "Value": m.value,
                    "Timestamp": datetime.fromtimestamp(m.timestamp / 1000, UTC),
                }
                for m in session.scalars(query)
            ]

    def metric_values(self, name: str) -> list[tuple[str, int, float]]:
        """Every value the job's metrics took, as (name, epoch ms, value), oldest first."""
        query = (
            select(MetricValue.name, MetricValue.timestamp, MetricValue.value)
            .where(MetricValue.job_name == name)
            .order_by(MetricValue.id)
        )
        with self.sessions() as session:
            return [(n, t, v) for n, t, v in session.execute(query)]

    def search(self, query: JobQuery) -> tuple[list[dict[str, Any]], str | None]:
        """One page of ListTrainingJobs: the summaries and the NextToken, if more remain."""
        return search(self.sessions, query, summary)

    def list(
        self, status: str | None = None, name_contains: str | None = None
    ) -> list[dict[str, Any]]:
        """Every job matching, newest first."""
        found: list[dict[str, Any]] = []
        query = JobQuery(status=status, name_contains=name_contains, descending=True, limit=1000)
        while True:
            page, token = self.search(query)
            found += page
            if token is None:
                return found
            query = dataclasses.replace(query, token=token)

    def stop(self, name: str) -> None:
        stop_job(self.writers, self.executor, TRAINING, _STOPPING, name, self._start_waiting)

    def _start_waiting(self) -> None:
        with self._starting:  # one at a time
            queue.start_ready(self.settings, self.executor, KINDS)
        self._start_wanted()

    def _start_wanted(self) -> None:
        """Start the waiting jobs that fit, if a create asked for it; when another thread is
        starting jobs, it does so once more before it lets go (it sees `_wanted` after)."""
        while self._wanted.is_set():
            if not self._starting.acquire(blocking=False):
                return
            try:
                self._wanted.clear()
                queue.start_ready(self.settings, self.executor, KINDS)
            finally:
                self._starting.release()

    def update(self, request: dict[str, Any]) -> str:
        """UpdateTrainingJob: the job's ARN."""
        return update_training_job(self.writers, request)

    def search_records(self, request: dict[str, Any]) -> dict[str, Any]:
        """Search (of training jobs): the page of results the request asks for."""
        return search_records(self.sessions, request)

    def progress(self, name: str) -> dict[str, Any] | None:
        """The transfer under way: {"phase", "done", "total"} (bytes), or None."""
        with self.sessions() as session:
            query = select(TrainingJob.progress).where(TrainingJob.name == name)
            return session.scalar(query)

    # After `list` above, `builtins.list` names the type.
    def log_streams(self, name: str) -> builtins.list[str]:
        with self.sessions() as session:
            query = (
                select(LogStream.name)
                .where(LogStream.job_name == name, LogStream.group == TRAINING.log_group)
                .order_by(LogStream.name)
            )
            return list(session.scalars(query))

    def log_events(
        self, name: str, after_id: int = 0, limit: int = 1000
    ) -> builtins.list[LogRecord]:
        """The job's log lines in the order they were written, after the record `after_id`."""
        with self.sessions() as session:
            query = (
                select(LogEvent, LogStream.name)
                .join(LogStream, LogStream.id == LogEvent.stream_id)
                .where(LogStream.job_name == name, LogStream.group == TRAINING.log_group)
                .where(LogEvent.id > after_id)
                .order_by(LogEvent.id)
                .limit(limit)
            )
            return [
                LogRecord(e.id, stream, e.timestamp, e.message)
                for e, stream in session.execute(query).all()
            ]

    def iter_log_events(self, name: str) -> Iterator[LogRecord]:
        after = 0
        while batch := self.log_events(name, after):
            yield from batch
            after = batch[-1].id

    def _get(self, name: str) -> TrainingJob:
        return current(self.sessions, TrainingJob, state.TERMINAL, name, _not_found, self._recheck)

    def _recheck(self, name: str) -> None:
        # The look is taken without the lock: describes of running jobs do not queue behind
        # starts; only a sweep, when it is needed, waits for it.
        recovery.check(self.settings, self.executor, KINDS, TRAINING, name, self._starting)
        self._start_wanted()


def _check_supported(request: dict[str, Any]) -> None:
    """What SageMaker accepts but openmaker cannot run yet, refused before anything starts."""
    try:
        image_of(request)
    except ImageError as exc:
        raise ValidationException(f"AlgorithmSpecification.TrainingImage: {exc}") from None


def _not_found(name: str) -> ResourceNotFound:
    return ResourceNotFound(f"Requested resource not found: training job {name}")


_STOPPING: Stopping[TrainingJob] = Stopping(
    waiting=state.waiting,  # Pending or Restarting
    stopped=lambda job: state.finish(job, SecondaryStatus.STOPPED, None),
    stopping=lambda job: state.enter(job, SecondaryStatus.STOPPING),
    not_found=_not_found,
)
