"""The TransformJob resource as the shared job machinery (openmaker/jobs/) sees it: it waits in
the queue for the capacity its `TransformResources` ask for, runs in a worker process through
the executor (openmaker/transform/worker.py). A job whose worker vanished (`kill -9`, the OOM
killer) starts again, up to MAX_ATTEMPTS times: an object's output is put only once it is whole,
so transforming every object again leaves the same outputs."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from openmaker.jobs.resource import Instances, ResourceKind
from openmaker.serving.clock import now
from openmaker.settings import Settings
from openmaker.transform import status

if TYPE_CHECKING:
    from openmaker.jobs.db import JobRecord, TransformJobRecord

LOG_GROUP = "/aws/sagemaker/TransformJobs"
# A transform job's network, cgroups and folder are keyed apart from training jobs' and
# endpoints' of the same name (ResourceKind.local_key).
NETWORK_KEY_PREFIX = "transform:"
# How many workers a job may lose before it fails (its first included).
MAX_ATTEMPTS = 3


def network_key(name: str) -> str:
    return TRANSFORM.local_key(name)


def stream_name(job: str, instance_id: str, epoch: int) -> str:
    """`<job>/<instance-id>-<epoch seconds>`, as SageMaker names an instance's stream."""
    return f"{job}/{instance_id}-{epoch}"


def table() -> type[TransformJobRecord]:
    from openmaker.jobs.db import TransformJobRecord

    return TransformJobRecord


def _instances(request: dict[str, Any]) -> Instances:
    resources = request["TransformResources"]
    return Instances(
        resources["InstanceType"], int(resources.get("InstanceCount", 1)), "TransformResources"
    )


def enter(job: JobRecord, secondary: str, message: str = "") -> None:
    """Record the secondary status `secondary` (what the queue reads), with `message`."""
    job.secondary_status = secondary
    job.transitions = [{"Status": secondary, "StatusMessage": message}]
    job.last_modified_time = now()


def finish(job: JobRecord, final: str, reason: str | None) -> None:
    """End the job in `final` (Completed, Failed, Stopped), releasing its share."""
    job.status, job.failure_reason, job.progress = final, reason, None
    job.worker, job.worker_ready = None, False
    job.placement = None
    record = _transform(job)
    if record.transform_start_time is not None and record.transform_end_time is None:
        record.transform_end_time = now()
    enter(job, final)


class _Lifecycle:
    def needs_worker(self, job: JobRecord) -> bool:
        return job.status == status.IN_PROGRESS and job.worker is None

    def starting(self, job: JobRecord) -> None:
        enter(job, status.STARTING)

    def waiting(self, job: JobRecord, message: str) -> None:
        if not self.waits(job, message):
            enter(job, status.PENDING, message)

    def waits(self, job: JobRecord, message: str) -> bool:
        current = job.transitions[-1].get("StatusMessage") if job.transitions else None
        return job.secondary_status == status.PENDING and current == message

    def failed(self, job: JobRecord, reason: str) -> None:
        finish(job, status.FAILED, reason)

    def lost(self, job: JobRecord, what: str) -> bool:
        if job.status == status.STOPPING:
            finish(job, status.STOPPED, None)
            return False
        attempt = (job.attempts or 1) + 1
        if attempt > MAX_ATTEMPTS:
            finish(job, status.FAILED, f"{what}, for the {MAX_ATTEMPTS}th time: the job ended.")
            return False
        job.attempts = attempt
        job.worker, job.worker_ready, job.placement = None, False, None
        # Back in the queue: it starts again as soon as its share of the machine is free.
        enter(
            job,
            status.STARTING,
            f"Restarting: {what} (attempt {attempt} of {MAX_ATTEMPTS}; every object is "
            "transformed again)",
        )
        return True


def _transform(job: JobRecord) -> TransformJobRecord:
    # Only rows of the transform table reach the transform kind's lifecycle.
    return cast("TransformJobRecord", job)


class _Leftovers:
    """A transform job's instances leave their folders, cgroups and a bridge."""

    def remove_lost(self, settings: Settings, name: str) -> None:
        from openmaker.runtime.network import remove
        from openmaker.serving.limits import remove_owner_cgroups

        remove(settings.home, network_key(name))
        remove_owner_cgroups(settings.home, network_key(name))
        shutil.rmtree(instances_dir(settings, name), ignore_errors=True)

    def remove_stale(self, settings: Settings, running: Callable[[list[str]], set[str]]) -> None:
        from openmaker.runtime.network import jobs_with_networks, remove
        from openmaker.serving.limits import owners_with_cgroups, remove_owner_cgroups

        for key in TRANSFORM.stale(jobs_with_networks(settings.home), running):
            remove(settings.home, key)
        for key in TRANSFORM.stale(owners_with_cgroups(settings.home), running):
            remove_owner_cgroups(settings.home, key)


def instances_dir(settings: Settings, name: str) -> Path:
    """The folder of the job's instances (each its model data and container state)."""
    return settings.jobs_dir / TRANSFORM.local_key(name) / "instances"


TRANSFORM = ResourceKind(
    name="TransformJob",
    noun="transform job",
    arn_kind="transform-job",
    log_group=LOG_GROUP,
    active=status.ACTIVE,
    ended=status.ENDED,
    table=table,
    instances=_instances,
    lifecycle=_Lifecycle(),
    leftovers=_Leftovers(),
    runner="openmaker.transform.worker",
    key_prefix=NETWORK_KEY_PREFIX,
)
