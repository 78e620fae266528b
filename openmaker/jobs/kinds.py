"""The kinds of resource openmaker runs as jobs, and finding a resource's kind.

Training jobs are the only kind yet. Another kind (an endpoint, a transform or processing job)
is a `ResourceKind` added to `KINDS`: its table, statuses and log group, what its request asks
of the machine, and how its statuses change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from openmaker.jobs import retry
from openmaker.jobs.logs import LOG_GROUP
from openmaker.jobs.resource import Instances, ResourceKind
from openmaker.serving.kind import ENDPOINT
from openmaker.training import state
from openmaker.training.status import ACTIVE, ENDED, SecondaryStatus

if TYPE_CHECKING:
    from openmaker.jobs.db import JobRecord, TrainingJob


def _training_table() -> type[TrainingJob]:
    from openmaker.jobs.db import TrainingJob

    return TrainingJob


def _training_instances(request: dict[str, Any]) -> Instances:
    resources = request["ResourceConfig"]
    return Instances(
        resources["InstanceType"], int(resources.get("InstanceCount", 1)), "ResourceConfig"
    )


class _TrainingLifecycle:
    def needs_worker(self, job: JobRecord) -> bool:
        return state.waiting(_training(job))

    def starting(self, job: JobRecord) -> None:
        if job.secondary_status != SecondaryStatus.STARTING:
            state.enter(_training(job), SecondaryStatus.STARTING)

    def waiting(self, job: JobRecord, message: str) -> None:
        state.wait(_training(job), message)

    def waits(self, job: JobRecord, message: str) -> bool:
        pending = job.secondary_status == SecondaryStatus.PENDING
        return pending and state.status_message(_training(job)) == message

    def failed(self, job: JobRecord, reason: str) -> None:
        state.finish(_training(job), SecondaryStatus.FAILED, reason)

    def lost(self, job: JobRecord, what: str) -> bool:
        return retry.restart_or_fail(_training(job), what)


def _training(job: JobRecord) -> TrainingJob:
    # Only rows of the training table reach the training kind's lifecycle.
    return cast("TrainingJob", job)


TRAINING = ResourceKind(
    name="TrainingJob",
    noun="training job",
    arn_kind="training-job",
    log_group=LOG_GROUP,
    active=frozenset(ACTIVE),
    ended=frozenset(ENDED),
    table=_training_table,
    instances=_training_instances,
    lifecycle=_TrainingLifecycle(),
)

KINDS: tuple[ResourceKind, ...] = (TRAINING, ENDPOINT)


def of_arn(arn: str) -> ResourceKind | None:
    """The kind of the resource `arn` names (`arn:aws:sagemaker:…:training-job/name`)."""
    resource = arn.split(":", 5)[-1] if arn.count(":") >= 5 else ""
    return next((k for k in KINDS if resource.startswith(f"{k.arn_kind}/")), None)


def log_groups() -> tuple[str, ...]:
    return tuple(dict.fromkeys(kind.log_group for kind in KINDS))
