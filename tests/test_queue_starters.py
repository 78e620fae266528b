"""Who starts a waiting job: a worker that ends (and frees room) starts only the jobs that have
waited (Pending, or to restart); a job just created is its creator's to start, for the ending
worker has no fork server and would start it with a Python start of its own."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from openmaker.jobs import queue
from openmaker.jobs.db import TrainingJob, writer_sessions
from openmaker.jobs.executor import Order, WorkerRef
from openmaker.resources import KINDS
from openmaker.settings import Settings, load_settings
from openmaker.training import state
from openmaker.training.service import TrainingJobs
from openmaker.training.status import SecondaryStatus
from tests.helpers import make_image, request, stored_job


class Starts:
    """An executor that records what it is asked to start (no worker runs here: what is under
    test is which jobs the queue hands out, and to whom)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def submit(
        self,
        order: Order,
        settings: Settings,
        before_start: Callable[[WorkerRef], None] | None = None,
    ) -> WorkerRef:
        self.names.append(order.name)
        worker = f"test:{order.name}"
        if before_start is not None:
            before_start(worker)
        return worker

    def start_ahead(self, runner: str) -> None:
        pass

    def lost(self, worker: WorkerRef) -> bool:
        return False

    def stop(self, worker: WorkerRef) -> None:
        pass

    def describe(self, worker: WorkerRef) -> str:
        return worker

    def reap(self) -> None:
        pass


def test_an_ending_worker_leaves_new_jobs_to_their_creator_and_starts_waiting_ones(
    home: Path, tmp_path: Path
) -> None:
    settings = load_settings()
    image = str(make_image(tmp_path / "image", "#!/bin/sh\nexit 0\n"))
    jobs = TrainingJobs(settings, executor=Starts(), sweep=False)
    # Stored as a create stores them, not yet started by their creator.
    for name in ("q-pending", "q-new"):  # oldest first
        jobs._create(request(name, image, "s3://bucket/out"))
    with writer_sessions(settings)() as session:
        pending = session.get(TrainingJob, "q-pending")
        assert pending is not None
        state.wait(pending, "Waiting for capacity on this machine")
        session.commit()

    ending_worker = Starts()
    queue.start_ready(settings, ending_worker, KINDS, new=False)
    assert ending_worker.names == ["q-pending"]
    new = stored_job(jobs, "q-new")
    assert (new.worker, new.secondary_status) == (None, SecondaryStatus.STARTING)
    assert stored_job(jobs, "q-pending").worker == "test:q-pending"

    creator = Starts()
    queue.start_ready(settings, creator, KINDS)
    assert creator.names == ["q-new"]
    assert stored_job(jobs, "q-new").worker == "test:q-new"


def test_an_ending_worker_starts_a_job_to_restart(home: Path, tmp_path: Path) -> None:
    settings = load_settings()
    image = str(make_image(tmp_path / "image", "#!/bin/sh\nexit 0\n"))
    jobs = TrainingJobs(settings, executor=Starts(), sweep=False)
    jobs._create(
        request("q-again", image, "s3://bucket/out", RetryStrategy={"MaximumRetryAttempts": 2})
    )
    with writer_sessions(settings)() as session:
        job = session.get(TrainingJob, "q-again")
        assert job is not None
        assert state.waiting(job)
        from openmaker.training.retry import restart_or_fail

        assert restart_or_fail(job, "its worker was killed")
        session.commit()

    ending_worker = Starts()
    queue.start_ready(settings, ending_worker, KINDS, new=False)
    assert ending_worker.names == ["q-again"]
