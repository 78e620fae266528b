"""The ProcessingJob resource as the shared job machinery (openmaker/jobs/) sees it: its table,
statuses and log group, the hosts it asks for, how its statuses change, what a lost job leaves
on the machine, and the module that runs it in a worker."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from openmaker.jobs.resource import Instances, ResourceKind
from openmaker.processing import status
from openmaker.processing.status import ProcessingJobStatus

if TYPE_CHECKING:
    from openmaker.jobs.db import JobRecord, ProcessingJobRecord
    from openmaker.settings import Settings

LOG_GROUP = "/aws/sagemaker/ProcessingJobs"
# A processing job's network and S3 key are keyed apart from a training job's of the same name
# (the SDK names both after the image): no resource name holds a colon.
KEY_PREFIX = "processing:"


def key(name: str) -> str:
    return KEY_PREFIX + name


def table() -> type[ProcessingJobRecord]:
    from openmaker.jobs.db import ProcessingJobRecord

    return ProcessingJobRecord


def _instances(request: dict[str, Any]) -> Instances:
    cluster = request["ProcessingResources"]["ClusterConfig"]
    return Instances(
        cluster["InstanceType"],
        int(cluster["InstanceCount"]),
        "ProcessingResources.ClusterConfig",
    )


def _processing(job: JobRecord) -> ProcessingJobRecord:
    # Only rows of the processing table reach this kind's lifecycle.
    return cast("ProcessingJobRecord", job)


class _Lifecycle:
    def needs_worker(self, job: JobRecord) -> bool:
        return status.waiting(job)

    def starting(self, job: JobRecord) -> None:
        if job.secondary_status != status.STARTING:
            status.enter(job, status.STARTING, "Preparing the instances for processing")

    def waiting(self, job: JobRecord, message: str) -> None:
        if job.secondary_status != status.PENDING or status.status_message(job) != message:
            status.enter(job, status.PENDING, message)

    def waits(self, job: JobRecord, message: str) -> bool:
        pending = job.secondary_status == status.PENDING
        return pending and status.status_message(job) == message

    def failed(self, job: JobRecord, reason: str) -> None:
        status.finish(_processing(job), ProcessingJobStatus.FAILED, reason)

    def lost(self, job: JobRecord, what: str) -> bool:
        # Processing jobs have no RetryStrategy: a lost worker ends the job.
        status.finish(_processing(job), ProcessingJobStatus.FAILED, f"InternalServerError: {what}")
        return False


class _Leftovers:
    """A processing job's hosts leave what a training job's do: volumes and folders, memory
    cgroups, and a bridge (keyed `processing:<name>`)."""

    def remove_lost(self, settings: Settings, name: str) -> None:
        from openmaker.runtime.network import remove
        from openmaker.training.host.site import remove_job_cgroups, unmount_under

        unmount_under(settings.jobs_dir / name)
        remove(settings.home, key(name))
        remove_job_cgroups(settings.home, name)
        if not settings.keep_job_files:
            for folder in (settings.jobs_dir / name).glob("algo-*"):
                shutil.rmtree(folder, ignore_errors=True)

    def remove_stale(self, settings: Settings, running: Callable[[list[str]], set[str]]) -> None:
        """Bridges of processing jobs no worker runs (cgroups: the training kind's sweep
        removes those of every job no worker runs, whatever its kind)."""
        from openmaker.runtime.network import jobs_with_networks, remove

        keys = jobs_with_networks(settings.home)
        names = [k.removeprefix(KEY_PREFIX) for k in keys if k.startswith(KEY_PREFIX)]
        for name in set(names) - running(names):
            remove(settings.home, key(name))


PROCESSING = ResourceKind(
    name="ProcessingJob",
    noun="processing job",
    arn_kind="processing-job",
    log_group=LOG_GROUP,
    active=frozenset(status.ACTIVE),
    ended=frozenset(status.ENDED),
    table=table,
    instances=_instances,
    lifecycle=_Lifecycle(),
    leftovers=_Leftovers(),
    runner="openmaker.processing.worker",
)
