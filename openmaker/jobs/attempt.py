"""A worker's attempt at a job: the guard every kind's worker puts on its changes to the job's
row, so that a worker thought lost, whose job was restarted or ended, changes nothing."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

if TYPE_CHECKING:  # the database layer is heavy to import; a worker loads it in the background
    from openmaker.jobs.db import JobRecord
    from openmaker.jobs.executor import WorkerRef

Job = TypeVar("Job", bound="JobRecord")


class Stop(Protocol):
    """What stops the job's hosts (a host's StopControl)."""

    def request(self, reason: str = ...) -> None: ...


class Attempt(Generic[Job]):
    """This worker's attempt at the job: it changes the job only while the job is still at
    that attempt and not ended (`ended`, in the kind's statuses). `worker` names this worker,
    as its executor does; `stopped` is the stop reason a job no longer its own gets."""

    def __init__(
        self,
        number: int,
        stop: Stop,
        worker: WorkerRef,
        ended: Collection[str],
        stopped: str = "Stopped",
    ) -> None:
        self.number, self.stop, self.worker = number, stop, worker
        self.ended, self.stopped = ended, stopped

    def current(self, job: Job) -> bool:
        return (job.attempts or 1) == self.number and job.status not in self.ended

    def only(self, change: Callable[[Job], object]) -> Callable[[Job], None]:
        def guarded(job: Job) -> None:
            if self.current(job):
                change(job)

        return guarded

    def claim(self, job: Job) -> None:
        if not self.current(job):
            self.stop.request(self.stopped)
            return
        # SIGTERM is handled from here on: a stop asked for before is read from the row.
        job.worker, job.worker_ready = self.worker, True
        if job.stop_requested:
            self.stop.request(job.stop_requested)
