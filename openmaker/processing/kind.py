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
# A processing job's folder, cgroups, network and S3 key are keyed apart from a training job's of
# the same name (the SDK names both after the image): ResourceKind.local_key.
KEY_PREFIX = "processing:"


def key(name: str) -> str:
    return PROCESSING.local_key(name)


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
    cgroups, and a bridge, all keyed `processing:<name>`."""

    def remove_lost(self, settings: Settings, name: str) -> None:
        from openmaker.runtime.network import remove
        from openmaker.training.host.site import remove_job_cgroups, unmount_under

        folder = settings.jobs_dir / key(name)
        unmount_under(folder)
        remove(settings.home, key(name))
        remove_job_cgroups(settings.home, key(name))
        if not settings.keep_job_files:
            for host in folder.glob("algo-*"):
                shutil.rmtree(host, ignore_errors=True)

    def remove_stale(self, settings: Settings, running: Callable[[list[str]], set[str]]) -> None:
        """Bridges and memory cgroups of processing jobs no worker runs."""
        from openmaker.training.host.site import remove_stale_hosts

        remove_stale_hosts(PROCESSING, settings, running)


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
    key_prefix=KEY_PREFIX,
)
