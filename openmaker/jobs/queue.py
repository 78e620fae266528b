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
from collections.abc import Iterator

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from openmaker.config import Settings
from openmaker.jobs import capacity, state
from openmaker.jobs.capacity import Placement
from openmaker.jobs.db import TrainingJob, sessions, writer_sessions
from openmaker.jobs.executor import Executor, Worker, process_start_time
from openmaker.jobs.training import SecondaryStatus

LAUNCH_FILE = "launch.json"


def save_launch(settings: Settings, job_name: str, env: dict[str, str]) -> None:
    """Keep the submitter's environment (endpoints, credentials, settings) for every start of
    the job — its restarts too, whoever starts them. Readable by its owner only."""
    folder = settings.jobs_dir / job_name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LAUNCH_FILE
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    os.fchmod(descriptor, 0o600)  # a file left by an older openmaker may be wider
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
    # Read first: most calls (a command starting, a describe polling a Pending job) change
    # nothing, and need not wait for the write lock that workers recording their logs hold.
    with sessions(settings)() as session:
        jobs = _active(session)
        if not any(map(state.waiting, jobs)):
            return
        machine = capacity.machine(settings)
        if not any(_changes(_plan(jobs, machine))):
            return
    me, started = os.getpid(), process_start_time(os.getpid())
    chosen: list[tuple[TrainingJob, Placement]] = []
    with writer_sessions(settings)() as session:
        for job, placement, message in _plan(_active(session), machine):
            if placement is None:
                _wait(job, message)
                continue
            job.placement = placement
            job.worker_pid, job.worker_started, job.worker_ready = me, started, False
            if job.secondary_status != SecondaryStatus.STARTING:
                state.enter(job, SecondaryStatus.STARTING)
            chosen.append((job, placement))
        session.commit()
    for job, placement in chosen:
        _submit(settings, executor, job, placement, me)


def _active(session: Session) -> list[TrainingJob]:
    query = (
        select(TrainingJob)
        .where(TrainingJob.status.in_((state.IN_PROGRESS, state.STOPPING)))
        .order_by(TrainingJob.creation_time, TrainingJob.name)
    )
    return list(session.scalars(query))


def _plan(
    jobs: list[TrainingJob], machine: capacity.Machine
) -> list[tuple[TrainingJob, Placement | None, str]]:
    """For each waiting job: where it starts now, or (None and) what it waits for."""
    used = [job.placement for job in jobs if job.placement is not None]
    blocked_by: str | None = None
    plan: list[tuple[TrainingJob, Placement | None, str]] = []
    for job in filter(state.waiting, jobs):
        placement = None if blocked_by else capacity.place(job.request, machine, used)
        if placement is not None:
            used.append(placement)
            plan.append((job, placement, ""))
            continue
        message = (
            f"Waiting for capacity behind the training job {blocked_by}"
            if blocked_by
            else capacity.waiting_message(job.request, machine, used)
        )
        blocked_by = blocked_by or job.name
        plan.append((job, None, message))
    return plan


def _changes(plan: list[tuple[TrainingJob, Placement | None, str]]) -> Iterator[bool]:
    for job, placement, message in plan:
        yield placement is not None or (job.secondary_status, _message(job)) != (
            SecondaryStatus.PENDING,
            message,
        )


def _message(job: TrainingJob) -> str | None:
    return job.transitions[-1].get("StatusMessage") if job.transitions else None


def _wait(job: TrainingJob, message: str) -> None:
    """Enter Pending, or update its message (what the job waits for) when it changed."""
    if job.secondary_status != SecondaryStatus.PENDING:
        state.enter(job, SecondaryStatus.PENDING, message)
    elif _message(job) != message:
        transitions = [dict(t) for t in job.transitions]
        transitions[-1]["StatusMessage"] = message
        job.transitions = transitions
        job.last_modified_time = state.now()


def _submit(
    settings: Settings,
    executor: Executor,
    job: TrainingJob,
    placement: Placement,
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
                reason = f"InternalServerError: cannot start a worker: {exc}"
                state.finish(row, SecondaryStatus.FAILED, reason)
                session.commit()
