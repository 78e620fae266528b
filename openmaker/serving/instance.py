"""One serving instance: its model data, its `serve` container in a network namespace of its
own on the endpoint's bridge, listening on 8080 as on SageMaker, and its health.

Its folder (`$OPENMAKER_HOME/endpoints/<endpoint>/<instance>`) holds the model data, shown
read-only at /opt/ml/model, and the container's copy-on-write state; it goes with the instance.
The container is held to the instance's share of the machine (serving/limits.py), and with
`VolumeSizeInGB` the folder is a disk volume of its own (runtime/volume.py).

An inference pipeline's instance runs each of its containers (serving/pipeline.py) in that
namespace, each on its own port with its own model data and state (`<folder>/<hostname>/`),
sharing the instance's memory. A multi-model instance starts with no model: its `models/`
folder, shown read-only at /opt/ml/models, is filled as models are asked for
(serving/multi_model.py).
"""

from __future__ import annotations

import http.client
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from openmaker.runtime import Bind, Container, ContainerSpec, usage, volume
from openmaker.runtime import limits as runtime_limits
from openmaker.runtime.images import Cancelled, ImageContainer, never
from openmaker.runtime.layers import hidden_paths
from openmaker.runtime.logs import OnLines
from openmaker.runtime.network import HostNamespace, JobNetwork, enter_host
from openmaker.runtime.spec import Limits
from openmaker.serving import limits, multi_model
from openmaker.serving.framework import standin
from openmaker.serving.image import PROGRAM_MOUNT, SERVE, ServingImage, pull, resolve
from openmaker.serving.model_data import ModelDataError, fetch
from openmaker.serving.output_tail import OutputTail
from openmaker.serving.pipeline import ContainerGroup, Member, members
from openmaker.serving.placement import Share
from openmaker.settings import Settings
from openmaker.shapes.locations import LocalPaths

PORT = 8080
MODEL_DIR = "/opt/ml/model"
# SageMaker's: each ping gets 2 s; a container gets 8 minutes to pass its first by default.
PING_SECONDS = 2.0
DEFAULT_STARTUP_SECONDS = 480
PATH = "/opt/program:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class InstancePlan:
    variant: str
    id: str  # "i-…": its host name, and the second half of its log stream's name
    index: int  # among the endpoint's instances
    container: dict[str, Any]  # the model's container definition
    image: ServingImage
    startup_seconds: int
    instance_type: str = "ml.local"
    # An inference pipeline's containers (`container` is the first's), each with its image.
    pipeline: tuple[tuple[Member, ServingImage], ...] = ()
    # Its memory in bytes when not its instance type's (a serverless variant's MemorySizeInMB).
    memory: int | None = None
    # A disk volume of its own for its folder, in GB (VolumeSizeInGB; None: openmaker's disk).
    volume_gb: int | None = None

    @property
    def stream(self) -> str:
        return f"{self.variant}/{self.id}"


def instance_folder(settings: Settings, endpoint: str, instance: str) -> Path:
    return settings.home / "endpoints" / endpoint / instance


@dataclass(frozen=True)
class _Part:
    """One container of an instance: what it runs, and its folder (model/, scratch/, state/)."""

    name: str  # "" for an instance's only container; a pipeline container's hostname
    container: dict[str, Any]
    image: ServingImage
    env: dict[str, str]  # what openmaker sets, above the model's Environment
    folder: Path


class Instance:
    def __init__(self, settings: Settings, endpoint: str, plan: InstancePlan, owner: str) -> None:
        """An instance of the endpoint (or transform job) `endpoint`, whose local key
        (ResourceKind.local_key) is `owner`: its cgroups go under it."""
        self.settings, self.endpoint, self.plan, self.owner = settings, endpoint, plan, owner
        self.folder = instance_folder(settings, endpoint, plan.id)
        self.container: Container | ContainerGroup | None = None
        self.namespace: HostNamespace | None = None
        self.address = ""
        self.pulled: dict[str, ImageContainer | None] = {}  # pulled images, by part, once prepared
        self.share: Share | None = None  # None: not limited (the whole machine)
        # Whether it answered /ping since its container last started.
        self.ready = False
        self.multi_model = multi_model.is_multi_model(plan.container)
        self.cgroups: list[tuple[str, ...]] = []  # its containers' (released when they stop)
        self.volume: volume.Volume | None = None
        self.tail = OutputTail()  # its containers' last lines, since they last started
        self.sampler: usage.UsageSampler | None = None  # its utilization's (serving/usage.py)

    def _parts(self) -> list[_Part]:
        plan = self.plan
        if not plan.pipeline:
            env = multi_model.environment() if self.multi_model else {}
            return [_Part("", plan.container, plan.image, env, self.folder)]
        return [
            _Part(m.hostname, m.container, image, m.environment(), self.folder / m.hostname)
            for m, image in plan.pipeline
        ]

    def prepare(self, cancelled: Cancelled = never) -> None:
        """Fetch the model data (ModelDataError says why it cannot be had) and pull the images
        (ImageError; a pull interrupted once `cancelled()`)."""
        self._mount_volume()
        if self.multi_model:  # its models come as they are asked for
            (self.folder / multi_model.FOLDER).mkdir(parents=True, exist_ok=True)
        for part in self._parts():
            model = part.folder / "model"
            for folder in (model, part.folder / "scratch", part.folder / "state"):
                folder.mkdir(parents=True, exist_ok=True)
            if not self.multi_model:
                try:
                    fetch(part.container, model, part.folder / "scratch", self.settings.store)
                except (ModelDataError, OSError) as exc:
                    if self.volume is None or not self.volume.mounted:
                        raise
                    if not (volume.no_space_left(exc) or volume.is_full(self.volume)):
                        raise
                    raise ModelDataError(
                        "the model data does not fit on the instance's "
                        f"{self.volume.size_gb} GB volume (VolumeSizeInGB): {exc}"
                    ) from None
            if part.image.framework is not None:
                standin.fetch_code(part.container, part.folder, self.settings.store)
            self.pulled[part.name] = pull(part.image, self.settings, cancelled)

    def start(
        self,
        network: JobNetwork,
        on_lines: OnLines,
        receiver: Callable[[str], OnLines] | None = None,
    ) -> None:
        """Start its containers; a pipeline container's output goes to `receiver`'s stream
        `<variant>/<instance>/<hostname>` (to `on_lines` without one)."""
        plan = self.plan
        self.namespace = enter_host(network, plan.id, plan.index)
        self.address = f"{network.addresses[plan.id]}:{PORT}"
        self.ready = False
        self.tail = OutputTail()
        parts = self._parts()
        started: list[Container] = []
        for part in parts:
            state = part.folder / "state"
            shutil.rmtree(state, ignore_errors=True)  # a restart begins from the image again
            state.mkdir()
            spec = self._spec(part, state, len(parts))
            if spec.limits.cgroup and spec.limits.cgroup not in self.cgroups:
                self.cgroups.append(spec.limits.cgroup)
            container = Container(spec)
            lines = on_lines
            if part.name and receiver is not None:
                lines = receiver(f"{plan.stream}/{part.name}")
            container.start(self.tail.wrap(lines))
            started.append(container)
        self.container = started[0] if len(started) == 1 else ContainerGroup(started)

    def _spec(self, part: _Part, state: Path, count: int) -> ContainerSpec:
        binds = [Bind(str(part.folder / "model"), MODEL_DIR, read_only=True, unnamed=True)]
        if self.multi_model:
            # A plain bind: models fetched while the container runs show through.
            binds.append(Bind(str(self.folder / multi_model.FOLDER), multi_model.MODELS_DIR))
        pulled = self.pulled.get(part.name)
        if pulled is not None:
            return self._image_spec(part, pulled, state, binds, count)
        if part.image.framework is not None:
            assert self.namespace is not None
            base = {"PATH": PATH, "AWS_REGION": self.settings.region, "LANG": "C.UTF-8"}
            return standin.container_spec(
                self.settings, part.image.framework, part.folder, binds,
                self._environment(part, base), self.plan.id, self.namespace.fd,
                self._limits(part, count),
            )  # fmt: skip
        return self._folder_spec(part, state, binds, count)

    def _environment(self, part: _Part, base: dict[str, str]) -> dict[str, str]:
        return {**base, **(part.container.get("Environment") or {}), **part.env}

    def _image_spec(
        self, part: _Part, image: ImageContainer, state: Path, binds: list[Bind], count: int
    ) -> ContainerSpec:
        """A pulled image: its root, ENV (the model's Environment on top), WORKDIR and USER."""
        assert self.namespace is not None
        return ContainerSpec(
            argv=image.argv,
            env=self._environment(part, {**image.env, "AWS_REGION": self.settings.region}),
            state_dir=state,
            layers=(image.rootfs,),
            binds=tuple(binds),
            workdir=image.workdir,
            user=image.user,
            stop_signal=image.stop_signal,
            hostname=self.plan.id,
            netns_fd=self.namespace.fd,
            detach_mounts_under=self.settings.home,
            limits=self._limits(part, count),
        )

    def _folder_spec(
        self, part: _Part, state: Path, binds: list[Bind], count: int
    ) -> ContainerSpec:
        assert self.namespace is not None and part.image.program_dir is not None
        base = {"PATH": PATH, "AWS_REGION": self.settings.region, "LANG": "C.UTF-8"}
        return ContainerSpec(
            argv=[SERVE],
            env=self._environment(part, base),
            state_dir=state,
            binds=(*binds, Bind(str(part.image.program_dir), PROGRAM_MOUNT)),
            workdir=PROGRAM_MOUNT,
            hostname=self.plan.id,
            netns_fd=self.namespace.fd,
            hidden=tuple(hidden_paths(self.settings.sandbox_hide)),
            removed=self.settings.private_paths,
            detach_mounts_under=self.settings.home,
            limits=self._limits(part, count),
        )

    def _limits(self, part: _Part, count: int) -> Limits:
        if self.share is None:  # the whole machine; in a cgroup still, to measure its use
            cgroup = limits.instance_cgroup(self.settings.home, self.owner, self.plan.id)
            return Limits(pids=self.settings.pids_limit, cgroup=cgroup)
        whole = limits.instance_limits(self.settings, self.owner, self.plan.id, self.share)
        if not part.name:
            return whole
        # A pipeline's containers share the instance's memory; each has a cgroup of its own.
        memory = None if whole.memory is None else whole.memory // count
        return replace(whole, memory=memory, cgroup=(*whole.cgroup, part.name))

    def oom_killed(self) -> bool:
        return any(runtime_limits.oom_killed(cgroup) for cgroup in self.cgroups)

    def measured(self) -> usage.Measured | None:
        """What its utilization is read from (serving/usage.py); None while it has no
        container here (none yet, or on another node)."""
        if self.container is None or not self.cgroups:
            return None
        share = self.share
        memory, gpus = (share.memory, share.gpus) if share is not None else (None, ())
        return usage.Measured(tuple(self.cgroups), memory, self.folder, gpus)

    def usage(self) -> dict[str, float] | None:
        """Its utilization since the last call (None: nothing yet, the first call starts the
        count; or no container)."""
        measured = self.measured()
        if measured is None:
            self.sampler = None
            return None
        if self.sampler is None:
            self.sampler = usage.UsageSampler()
            self.sampler.start(measured)
            return None
        return self.sampler.sample(measured)

    def ports(self) -> list[int]:
        return [m.port for m, _ in self.plan.pipeline] or [PORT]

    def held_by(self) -> dict[str, str]:
        """Who holds it elsewhere, for the proxy's multi-model fetches (serving/multi_model.py):
        nobody (its folder is on this machine)."""
        return {}

    def healthy(self) -> bool:
        """Whether `GET /ping` answers 200 within PING_SECONDS (from each of a pipeline's
        containers)."""
        host, _, _ = self.address.rpartition(":")
        return all(ping(host, port) for port in self.ports())

    def wait_healthy(self, stop: threading.Event) -> str | None:
        """None once it answers /ping; else why not, for a FailureReason."""
        assert self.container is not None
        deadline = time.monotonic() + self.plan.startup_seconds
        while not stop.is_set():
            code = self.container.poll()
            if code is not None:
                return self.exit_reason(code)
            if self.healthy():
                self.ready = True
                return None
            if time.monotonic() >= deadline:
                return (
                    f"its container did not answer GET /ping with 200 within "
                    f"{self.plan.startup_seconds} seconds"
                )
            stop.wait(0.2)
        return "the endpoint was deleted while it started"

    def exit_reason(self, code: int) -> str:
        """Why it will never answer /ping, its container having ended with `code`: with the
        last line it wrote."""
        if isinstance(self.container, Container):
            self.container.wait(0)  # ended: its output is read to the last line
        reason = f"its container exited with status {code} before it answered /ping"
        said = self.tail.last()
        return f'{reason}; its last output: "{said}"' if said else reason

    def stop(self, grace: float) -> None:
        self.ready = False
        if self.container is not None:
            self.container.stop(grace)
            self.container = None
            for cgroup in self.cgroups:
                runtime_limits.release(cgroup)
        if self.namespace is not None:
            self.namespace.close()
            self.namespace = None

    def _mount_volume(self) -> None:
        """Its folder on a volume of its own, when the variant asks for one (VolumeSizeInGB):
        the model data and what its containers write count against it."""
        if self.plan.volume_gb is None or self.volume is not None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self.volume = volume.mount(
                self.folder, self.plan.volume_gb, self.settings.home / "endpoints"
            )
        except volume.VolumeError as exc:
            raise ModelDataError(exc.reason) from None

    def remove(self) -> None:
        if self.volume is not None:
            volume.detach(self.volume)
            self.volume = None
        shutil.rmtree(self.folder, ignore_errors=True)


def ping(host: str, port: int) -> bool:
    connection = http.client.HTTPConnection(host, port, timeout=PING_SECONDS)
    try:
        connection.request("GET", "/ping")
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def pipeline_images(model: dict[str, Any]) -> tuple[tuple[Member, ServingImage], ...]:
    """An inference pipeline's containers, each with its image (ImageError: one cannot be
    served); none for a model of one container."""
    # The owner's own process: the model was checked against the API's roots.
    return tuple((m, resolve(m.container["Image"], LocalPaths.anywhere())) for m in members(model))
