"""Starting the jobs that wait, in creation order, as far as the machine has room.

There is no daemon: whoever may have made room calls `start_ready` — a command that creates a
job, a worker that ends, a stop, the recovery sweep. Jobs are chosen and their share of the
machine recorded under the database's write lock, with the starting process as their owner,
so two processes never start one job twice, and a starter that dies before its worker is
running leaves a job that the recovery sweep sees as lost.

A job waits (`Pending`) when it does not fit; the jobs behind it wait too, so that a large job
is never passed over for ever by smaller ones.
"""

from __future__ import annotations

import json
import os
import traceback
from typing import Any

from sqlalchemy import select, update

from openmaker.config import Settings
from openmaker.jobs import capacity, state
from openmaker.jobs.db import TrainingJob, sessions, writer_sessions
from openmaker.jobs.executor import Executor, Worker, process_start_time

LAUNCH_FILE = "launch.json"


def save_launch(settings: Settings, job_name: str, env: dict[str, str]) -> None:
    """Keep the submitter's environment (endpoints, credentials, settings) for every start of
    the job — its restarts too, whoever starts them. Readable by its owner only."""
    folder = settings.jobs_dir / job_name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LAUNCH_FILE
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        json.dump({"env": env}, file)


def _launch_env(settings: Settings, job_name: str) -> dict[str, str]:
    try:
        data = json.loads((settings.jobs_dir / job_name / LAUNCH_FILE).read_text())
    except (OSError, ValueError):
        return dict(os.environ)
    return dict(data["env"])


def start_ready(settings: Settings, executor: Executor) -> None:
    """Start every waiting job that fits now, oldest first."""
    with sessions(settings)() as session:  # most calls find nothing waiting: no write lock
        query = select(TrainingJob.name).where(
            TrainingJob.status == state.IN_PROGRESS, TrainingJob.worker_pid.is_(None)
        )
        if session.scalar(query.limit(1)) is None:
            return
    me, started = os.getpid(), process_start_time(os.getpid())
    machine = capacity.machine(settings)
    chosen: list[tuple[TrainingJob, dict[str, Any]]] = []
    with writer_sessions(settings)() as session:
        active = state.IN_PROGRESS, state.STOPPING
        jobs = session.scalars(
            select(TrainingJob)
            .where(TrainingJob.status.in_(active))
            .order_by(TrainingJob.creation_time, TrainingJob.name)
        ).all()
        waiting = [job for job in jobs if state.waiting(job)]
        if not waiting:
            return
        used = [job.placement for job in jobs if job.placement is not None]
        blocked_by: str | None = None
        for job in waiting:
            placement = None if blocked_by else capacity.place(job.request, machine, used)
            if placement is None:
                message = (
                    f"Waiting for capacity behind the training job {blocked_by}"
                    if blocked_by
                    else capacity.waiting_message(job.request, machine, used)
                )
                blocked_by = blocked_by or job.name
                _wait(job, message)
                continue
            used.append(placement)
            job.placement = placement
            job.worker_pid, job.worker_started, job.worker_ready = me, started, False
            if job.secondary_status != "Starting":
                state.enter(job, "Starting")
            chosen.append((job, placement))
        session.commit()
    for job, placement in chosen:
        _submit(settings, executor, job, placement, me)


def _wait(job: TrainingJob, message: str) -> None:
    """Enter Pending, or update its message (what the job waits for) when it changed."""
    if job.secondary_status != "Pending":
        state.enter(job, "Pending", message)
    elif job.transitions[-1].get("StatusMessage") != message:
        transitions = [dict(t) for t in job.transitions]
        transitions[-1]["StatusMessage"] = message
        job.transitions = transitions
        job.last_modified_time = state.now()


def _submit(
    settings: Settings,
    executor: Executor,
    job: TrainingJob,
    placement: dict[str, Any],
    owner: int,
) -> None:
    sessions = writer_sessions(settings)
    name = job.name

    def record(worker: Worker) -> None:
        # The worker becomes the job's owner before it gets the job: a starter killed now or
        # later leaves either a worker that runs it, or one that is gone and seen as lost.
        with sessions() as session:
            session.execute(
                update(TrainingJob)
                .where(TrainingJob.name == name, TrainingJob.worker_pid == owner)
                .where(TrainingJob.status.not_in(state.TERMINAL))
                .values(worker_pid=worker.pid, worker_started=worker.started)
            )
            session.commit()

    env = _launch_env(settings, name)
    try:
        executor.submit(job.arn, job.request, env, placement, job.attempts, record)
    except Exception as exc:  # the job must not wait for a worker that never came
        traceback.print_exc()
        with sessions() as session:
            row = session.get(TrainingJob, name)
            if row is not None and row.status not in state.TERMINAL:
                state.finish(row, "Failed", f"InternalServerError: cannot start a worker: {exc}")
                session.commit()
