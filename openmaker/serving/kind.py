"""Endpoints as a kind of job: what recovery and the log and tag machinery need to know.

An endpoint's worker is started through the queue and the executor, as a training job's is
(openmaker/jobs/queue.py): a new endpoint (`Creating`, no worker yet) needs one. Its request
asks the queue for no host: the worker reserves its instances' shares of the machine itself
(serving/placement.py), fleet by fleet, since updates change them while it runs. A worker that
vanishes fails the endpoint, saying so; its bridge and cgroups are then removed by the recovery
sweep.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from openmaker.jobs.resource import Instances, ResourceKind
from openmaker.serving import status
from openmaker.serving.clock import now

if TYPE_CHECKING:
    from openmaker.jobs.db import EndpointRecord, JobRecord
    from openmaker.settings import Settings

LOG_GROUP_PREFIX = "/aws/sagemaker/Endpoints"


def log_group(endpoint: str) -> str:
    return f"{LOG_GROUP_PREFIX}/{endpoint}"


def _table() -> type[EndpointRecord]:
    from openmaker.jobs.db import EndpointRecord

    return EndpointRecord


def _instances(request: dict[str, Any]) -> Instances:
    # No host through the queue: the worker reserves its fleets (serving/placement.py).
    return Instances("ml.local", 0, "ProductionVariants")


class _EndpointLifecycle:
    def needs_worker(self, job: JobRecord) -> bool:
        return job.status == status.CREATING and job.worker is None

    def starting(self, job: JobRecord) -> None:
        pass

    def waiting(self, job: JobRecord, message: str) -> None:
        pass

    def waits(self, job: JobRecord, message: str) -> bool:
        return True

    def failed(self, job: JobRecord, reason: str) -> None:
        fail(job, reason)

    def lost(self, job: JobRecord, what: str) -> bool:
        fail(job, f"{what}; its instances are gone. Delete the endpoint and create it again.")
        return False


# An endpoint's network, cgroups and folder under the jobs folder are keyed apart from a training
# job's of the same name, as `estimator.deploy()` names them (ResourceKind.local_key).
NETWORK_KEY_PREFIX = "endpoint:"


def network_key(name: str) -> str:
    return ENDPOINT.local_key(name)


class _Leftovers:
    """An endpoint's instances leave a bridge and its rules, and cgroups."""

    def remove_lost(self, settings: Settings, name: str) -> None:
        from openmaker.runtime.network import remove
        from openmaker.serving.limits import remove_owner_cgroups

        remove(settings.home, ENDPOINT.local_key(name))
        remove_owner_cgroups(settings.home, ENDPOINT.local_key(name))

    def remove_stale(self, settings: Settings, running: Callable[[list[str]], set[str]]) -> None:
        from openmaker.runtime.network import jobs_with_networks, remove
        from openmaker.serving.limits import owners_with_cgroups, remove_owner_cgroups

        for key in ENDPOINT.stale(jobs_with_networks(settings.home), running):
            remove(settings.home, key)
        for key in ENDPOINT.stale(owners_with_cgroups(settings.home), running):
            remove_owner_cgroups(settings.home, key)


def fail(job: JobRecord, reason: str) -> None:
    job.status, job.failure_reason = status.FAILED, reason
    job.last_modified_time = now()


ENDPOINT = ResourceKind(
    name="Endpoint",
    noun="endpoint",
    arn_kind="endpoint",
    log_group=LOG_GROUP_PREFIX,
    active=status.ACTIVE,
    ended=status.ENDED,
    table=_table,
    instances=_instances,
    lifecycle=_EndpointLifecycle(),
    leftovers=_Leftovers(),
    runner="openmaker.serving.worker",
    key_prefix=NETWORK_KEY_PREFIX,
)
