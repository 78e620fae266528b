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
        jobs `names`, of this kind, that a worker runs)."""


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
    # Before a job's name in its key on this machine (`local_key`): "" for training jobs only.
    key_prefix: str

    def local_key(self, name: str) -> str:
        """What the job `name` of this kind is called on this machine: its folder under the
        jobs folder (launch.json, worker.log, its hosts'), its cgroups, its bridge and its key to
        the S3 gate. Names are unique per kind only (`estimator.deploy()` names an endpoint
        after its training job), and none holds a colon: "endpoint:<name>" is no training job's.
        A training job's key is its bare name (`jobs/<name>/algo-1`, as users know it)."""
        return self.key_prefix + name

    def name_of(self, key: str) -> str | None:
        """The name of the job of this kind whose local key is `key`; None for another kind's
        key."""
        if self.key_prefix:
            return key.removeprefix(self.key_prefix) if key.startswith(self.key_prefix) else None
        return None if ":" in key else key

    def stale(self, keys: Iterable[str], running: Callable[[list[str]], set[str]]) -> list[str]:
        """Those of the local `keys` (of every kind) that are of jobs of this kind that no
        worker runs (`running(names)`: those of the jobs `names`, of this kind, it runs)."""
        names = sorted({name for key in keys if (name := self.name_of(key)) is not None})
        return [self.local_key(name) for name in sorted(set(names) - running(names))]


def of_arn(kinds: Iterable[ResourceKind], arn: str) -> ResourceKind | None:
    """The kind of the resource `arn` names (`arn:aws:sagemaker:…:training-job/name`)."""
    resource = arn.split(":", 5)[-1] if arn.count(":") >= 5 else ""
    return next((k for k in kinds if resource.startswith(f"{k.arn_kind}/")), None)


def log_groups(kinds: Iterable[ResourceKind]) -> tuple[str, ...]:
    """The log groups of `kinds`, each once."""
    return tuple(dict.fromkeys(kind.log_group for kind in kinds))
