"""What a kind of resource tells the machinery every job shares.

The queue, capacity, recovery, log groups and tags handle every kind alike through a
`ResourceKind`, and are given the kinds there are: this package imports none. Training jobs are
the first (openmaker/training/kind.py); endpoints, transform and processing jobs plug in with a
kind of their own, listed in openmaker/resources.py, not with copies of that machinery.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # the database layer is heavy to import; a worker loads it in the background
    from openmaker.jobs.db import JobRecord
    from openmaker.settings import Settings


@dataclass(frozen=True)
class Instances:
    """The hosts a request asks for, and the request member that says so (for messages)."""

    instance_type: str
    count: int
    member: str


class Lifecycle(Protocol):
    """The status changes the shared machinery makes, in the kind's own statuses."""

    def needs_worker(self, job: JobRecord) -> bool:
        """Whether the job waits for a process to start it (new, waiting, or to restart)."""

    def starting(self, job: JobRecord) -> None:
        """A process is starting it."""

    def waiting(self, job: JobRecord, message: str) -> None:
        """It waits for capacity; `message` says what for (it may change while it waits)."""

    def waits(self, job: JobRecord, message: str) -> bool:
        """Whether it waits for capacity already, saying `message`."""

    def failed(self, job: JobRecord, reason: str) -> None:
        """It ends, failed, for `reason`."""

    def lost(self, job: JobRecord, what: str) -> bool:
        """Its worker is gone (`what` says how): restart it (True) or end it."""


class Leftovers(Protocol):
    """What the jobs of a kind leave on this machine when their worker is killed."""

    def remove_lost(self, settings: Settings, name: str) -> None:
        """Remove what job `name`, whose worker is gone, left (its volumes, its folders)."""

    def remove_stale(self, settings: Settings, running: Callable[[list[str]], set[str]]) -> None:
        """Remove what jobs that no worker runs hold here (`running(names)`: those of the
        jobs `names` that a worker runs)."""


@dataclass(frozen=True)
class ResourceKind:
    name: str  # as the model names the resource (Search's `Resource`): "TrainingJob"
    noun: str  # in messages: "training job"
    arn_kind: str  # the resource type in its ARN: "training-job"
    log_group: str  # its CloudWatch log group
    active: frozenset[str]  # statuses with work under way: a worker runs it, or it waits for one
    ended: frozenset[str]  # statuses it never leaves
    # Its table (the database layer is imported when first needed).
    table: Callable[[], type[JobRecord]]
    instances: Callable[[dict[str, Any]], Instances]
    lifecycle: Lifecycle
    leftovers: Leftovers
    # The module whose `run(order, settings, stop_before_start)` runs a job of this kind in a
    # worker process (openmaker/jobs/worker_process.py).
    runner: str


def of_arn(kinds: Iterable[ResourceKind], arn: str) -> ResourceKind | None:
    """The kind of the resource `arn` names (`arn:aws:sagemaker:…:training-job/name`)."""
    resource = arn.split(":", 5)[-1] if arn.count(":") >= 5 else ""
    return next((k for k in kinds if resource.startswith(f"{k.arn_kind}/")), None)


def log_groups(kinds: Iterable[ResourceKind]) -> tuple[str, ...]:
    """The log groups of `kinds`, each once."""
    return tuple(dict.fromkeys(kind.log_group for kind in kinds))
