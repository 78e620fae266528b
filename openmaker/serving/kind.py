"""Endpoints as a kind of job: what recovery and the log and tag machinery need to know.

An endpoint's worker is started by its service when it is created (serving/launcher.py), never
by the queue: endpoints do not wait for capacity here. A worker that vanishes fails the
endpoint, saying so; its bridge and cgroups are then removed by the recovery sweep.
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
    # Asked only of kinds whose jobs wait for the queue; an endpoint never does.
    return Instances("ml.local", 0, "ProductionVariants")


class _EndpointLifecycle:
    def needs_worker(self, job: JobRecord) -> bool:
        return False

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


# An endpoint's network is keyed apart from training jobs' (a job and an endpoint may share a
# name, as `estimator.deploy()` names them): no resource name holds a colon.
NETWORK_KEY_PREFIX = "endpoint:"


def network_key(name: str) -> str:
    return NETWORK_KEY_PREFIX + name


class _Leftovers:
    """An endpoint's instances leave a bridge and its rules."""

    def remove_lost(self, settings: Settings, name: str) -> None:
        from openmaker.runtime.network import remove

        remove(settings.home, network_key(name))

    def remove_stale(self, settings: Settings, running: Callable[[list[str]], set[str]]) -> None:
        from openmaker.runtime.network import jobs_with_networks, remove

        prefix = NETWORK_KEY_PREFIX
        keys = jobs_with_networks(settings.home)
        names = [key.removeprefix(prefix) for key in keys if key.startswith(prefix)]
        for name in set(names) - running(names):
            remove(settings.home, prefix + name)


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
    # Started by its service (serving/launcher.py), never through the executor's orders.
    runner="openmaker.serving.worker",
)
