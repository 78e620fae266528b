"""The TrainingJob resource as the shared job machinery (openmaker/jobs/) sees it: its table,
statuses and log group, what its request asks of the machine, how its statuses change, what a
lost job leaves on the machine, and the module that runs it in a worker."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from openmaker.jobs.logs import LOG_GROUP
from openmaker.jobs.resource import Instances, ResourceKind
from openmaker.settings import Settings
from openmaker.training import state
from openmaker.training.retry import restart_or_fail
from openmaker.training.status import ACTIVE, ENDED, SecondaryStatus

if TYPE_CHECKING:
    from openmaker.jobs.db import JobRecord, TrainingJob


def table() -> type[TrainingJob]:
    from openmaker.jobs.db import TrainingJob

    return TrainingJob


def _instances(request: dict[str, Any]) -> Instances:
    resources = request["ResourceConfig"]
    return Instances(
        resources["InstanceType"], int(resources.get("InstanceCount", 1)), "ResourceConfig"
    )


class _Lifecycle:
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
        return restart_or_fail(_training(job), what)


def _training(job: JobRecord) -> TrainingJob:
    # Only rows of the training table reach the training kind's lifecycle.
    return cast("TrainingJob", job)


class _Leftovers:
    """A training job's hosts leave volumes and folders, memory cgroups and a bridge."""

    def remove_lost(self, settings: Settings, name: str) -> None:
        """Like a SageMaker instance's disk, a host's folder (input data included) goes away
        with the job; OPENMAKER_KEEP_JOB_FILES=1 keeps it for a post-mortem. (A restarted
        job's new worker clears what is left of them before it starts, whatever the setting.)
        Their volumes are unmounted first, whatever the setting: a lost worker's guard may not
        have yet."""
        from openmaker.training.host.site import unmount_under

        unmount_under(settings.jobs_dir / name)
        if settings.keep_job_files:
            return
        for folder in (settings.jobs_dir / name).glob("algo-*"):
            shutil.rmtree(folder, ignore_errors=True)

    def remove_stale(self, settings: Settings, running: Callable[[list[str]], set[str]]) -> None:
        """Memory cgroups (a killed worker's, once its code died), bridges and their rules."""
        from openmaker.training.host.site import remove_stale_hosts

        remove_stale_hosts(TRAINING, settings, running)


TRAINING = ResourceKind(
    name="TrainingJob",
    noun="training job",
    arn_kind="training-job",
    log_group=LOG_GROUP,
    active=frozenset(ACTIVE),
    ended=frozenset(ENDED),
    table=table,
    instances=_instances,
    lifecycle=_Lifecycle(),
    leftovers=_Leftovers(),
    runner="openmaker.training.worker",
    key_prefix="",  # jobs/<name>/algo-1, as users and scripts know it
)
