"""Where a job's hosts run: threads of its worker on this machine (`TrainingHost` itself) or
actors on the Ray cluster (`RayHost`, OPENMAKER_EXECUTOR=ray). The worker drives both alike:
prepare(stop), run(stop), finish(), close(), then the job's outputs from all of them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from openmaker.settings import Settings
from openmaker.training.host.events import Emit
from openmaker.training.host.spec import HostSpec
from openmaker.training.host.training_host import Artifacts, HostResult, StopControl, TrainingHost
from openmaker.training.host.training_host import upload_outputs as upload_local


class HostRunner(Protocol):
    """What the worker drives: a `TrainingHost`, or a `RayHost` standing for one."""

    spec: HostSpec

    @property
    def name(self) -> str: ...

    def prepare(self, stop: StopControl) -> None: ...

    def run(self, stop: StopControl) -> HostResult: ...

    def finish(self) -> None: ...

    def close(self) -> None: ...


def load(executor: str) -> None:
    """What the hosts will need under `executor`, loaded ahead of the job: Ray, and openmaker's
    side of it. It starts no thread and opens no file (the fork server runs it)."""
    if executor == "ray":
        import openmaker.training.ray_hosts  # noqa: F401
        from openmaker.training.ray_cluster import load as load_ray

        load_ray()


def warm(settings: Settings) -> None:
    """What the job's hosts will need, started early: under Ray, loading it and joining the
    cluster (seconds), while the worker plans the hosts."""
    if settings.executor == "ray":
        from openmaker.training.ray_cluster import connect_soon

        connect_soon(settings)


def host_runners(settings: Settings, specs: list[HostSpec], emit: Emit) -> list[HostRunner]:
    if settings.executor == "ray":
        from openmaker.training.ray_hosts import ray_hosts  # Ray loads only when used

        return list(ray_hosts(settings, specs, emit))
    return [TrainingHost(spec, emit) for spec in specs]


def upload_outputs(hosts: Sequence[HostRunner], emit: Emit) -> Artifacts:
    """One archive of every host's folders (CONTRACT.md §3), wherever the hosts ran."""
    if all(isinstance(host, TrainingHost) for host in hosts):
        return upload_local([h for h in hosts if isinstance(h, TrainingHost)], emit)
    from openmaker.training.ray_hosts import RayHost, upload_ray_outputs

    return upload_ray_outputs([h for h in hosts if isinstance(h, RayHost)], emit)
