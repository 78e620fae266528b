"""What a kind of resource tells the machinery every job shares.

The queue, capacity, recovery, log groups and tags handle every kind alike through a
`ResourceKind`: training jobs are the first; endpoints, transform and processing jobs plug in
with a kind of their own (openmaker/jobs/kinds.py holds them), not with copies of that
machinery.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # the database layer is heavy to import; a worker loads it in the background
    from openmaker.jobs.db import JobRecord


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
