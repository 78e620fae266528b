"""A job's hosts on a Ray cluster (OPENMAKER_EXECUTOR=ray), as seen from the job's worker.

The job's N hosts are one placement group, `STRICT_SPREAD` (one host per node: an instance is
a machine), each bundle sized from the instance-type catalog, or one unit of a node's own
resource named after the type (`ray start --resources '{"ml.m5.xlarge": 1}'`: that node stands
for one such instance). Each host is a `HostActor` (host/ray_actor.py) in its bundle; `RayHost` is
its stand-in in the worker, with the shape of a `TrainingHost`, so that the worker drives local
and remote hosts alike. The group is asked for when the first host prepares: while the cluster
lacks room the job is `Pending` with what it waits for, and fails after
`OPENMAKER_RAY_WAIT_SECONDS`.

Each host is on its own node: the job's network spans them (runtime/overlay.py). The hosts
reach the store through the server's S3 gate with a key of the job's hosts
(ray_store.py), not this machine's folder.

A node lost mid-job (its actor dies) stops the job's other hosts and ends the job as an
infrastructure failure naming the node: restarted under its RetryStrategy, or failed.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from openmaker.instances import catalog
from openmaker.runtime.network import remove as remove_network
from openmaker.runtime.overlay import overlay
from openmaker.settings import Settings
from openmaker.training.host.events import Emit, LogLine, StatusChanged
from openmaker.training.host.spec import HostSpec
from openmaker.training.host.training_host import (
    Artifacts,
    HostFailed,
    HostResult,
    OutputsFailed,
    StopControl,
)
from openmaker.training.ray_cluster import connect, describe_bundle, live_nodes, nodes_fitting
from openmaker.training.ray_store import through_the_gate
from openmaker.training.status import SecondaryStatus

if TYPE_CHECKING:
    from ray.util.placement_group import PlacementGroup

# How often the worker looks at a stop request, a pending group, an actor's events.
POLL_SECONDS = 0.5
# A host's actor that does not close within this is killed with its processes.
CLOSE_SECONDS = 60.0


def bundle_for(instance_type: str, offered: dict[str, float]) -> dict[str, float]:
    """What one host of `instance_type` reserves on its node: one unit of the node resource of
    that name where nodes advertise it, else the catalog's vCPUs, memory and GPUs."""
    if offered.get(instance_type):
        return {instance_type: 1}
    known = catalog().get(instance_type)
    if known is None:  # ml.local and unknown types: a node of its own, whatever its size
        return {"CPU": 1}
    wanted = {"CPU": float(known.cpus), "memory": float(known.memory)}
    if known.gpus:
        wanted["GPU"] = float(known.gpus)
    return wanted


class RayHosts:
    """The job's placement group and actors, shared by its hosts' stand-ins."""

    def __init__(self, settings: Settings, specs: list[HostSpec], emit: Emit) -> None:
        self.settings, self.specs, self.emit = settings, specs, emit
        self._lock = threading.Lock()
        self._placed: str | None = None  # None: not yet; "": placed; else why it failed
        self.group: PlacementGroup | None = None
        self.actors: list[Any] = []
        self.nodes: list[str] = []  # each host's node (its address)
        self._open = len(specs)

    def place(self, stop: StopControl) -> None:
        """Reserve the job's nodes and start its actors, once (HostFailed)."""
        with self._lock:
            if self._placed is None:
                try:
                    self._placed = self._place(stop)
                except Exception as exc:
                    traceback.print_exc()
                    self._placed = f"InternalServerError: could not use the Ray cluster: {exc}"
        if self._placed:
            stop.request("Failed")
            raise HostFailed(self._placed)

    def _place(self, stop: StopControl) -> str:
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from openmaker.training.host.ray_actor import HostActor

        connect(self.settings)
        instance_type = self.specs[0].instance_type
        count = len(self.specs)
        offered = ray.cluster_resources()  # type: ignore[no-untyped-call]
        bundle = bundle_for(instance_type, offered)
        self.group = placement_group([bundle] * count, strategy="STRICT_SPREAD")
        deadline = time.monotonic() + self.settings.ray_wait_seconds
        waiting = False
        ready = self.group.ready()
        while not ray.wait([ready], timeout=POLL_SECONDS)[0]:
            if stop.requested:
                return ""
            fitting = nodes_fitting(bundle)
            wants = (
                f"{count} × {instance_type}, one per node, each {describe_bundle(bundle)}: "
                f"{fitting} node{'s' if fitting != 1 else ''} of the Ray cluster "
                f"{'has' if fitting == 1 else 'have'} room for one now"
            )
            if time.monotonic() > deadline:
                return (
                    f"CapacityError: the Ray cluster had no room for {wants} "
                    f"(waited {self.settings.ray_wait_seconds:g} s, "
                    "OPENMAKER_RAY_WAIT_SECONDS)"
                )
            if not waiting:
                waiting = True
                self.emit(StatusChanged(SecondaryStatus.PENDING, f"on the Ray cluster: {wants}"))
        self.nodes = self._bundle_nodes()
        self.specs = across_nodes(self.settings, self.specs, self.nodes)
        remote = ray.remote(HostActor)
        for index, spec in enumerate(self.specs):
            strategy = PlacementGroupSchedulingStrategy(self.group, index)
            actor = remote.options(
                num_cpus=0,
                max_concurrency=8,  # prepare or run, drain, stop, parts: at once
                max_restarts=0,
                scheduling_strategy=strategy,
                name=f"openmaker:{spec.job_name}:{spec.host_name}",
                namespace="openmaker",
            ).remote(spec.to_json())
            self.actors.append(actor)
        if waiting:
            self.emit(StatusChanged(SecondaryStatus.STARTING))
        now = int(time.time() * 1000)
        for spec, node in zip(self.specs, self.nodes, strict=True):
            line = f"openmaker: host {spec.host_name} runs on node {node} of the Ray cluster"
            self.emit(LogLine(spec.host_name, now, line))
        return ""

    def _bundle_nodes(self) -> list[str]:
        """The address of the node each bundle of the (ready) group is on, in order."""
        from ray.util.placement_group import placement_group_table

        node_of = {n["NodeID"]: n["NodeManagerAddress"] for n in live_nodes()}
        placed = placement_group_table(self.group)["bundles_to_node_id"]
        return [node_of.get(placed[index], placed[index]) for index in range(len(self.specs))]

    def released(self) -> None:
        """One host closed; the last one gives the group back."""
        with self._lock:
            self._open -= 1
            if self._open or self.group is None:
                return
        import ray
        from ray.util.placement_group import remove_placement_group

        for actor in self.actors:
            ray.kill(actor)
        remove_placement_group(self.group)


def across_nodes(settings: Settings, specs: list[HostSpec], nodes: list[str]) -> list[HostSpec]:
    """The specs with the job's network across `nodes` (runtime/overlay.py) where the job has
    one of its own; each node makes its host's part. The bridge made on this machine for the
    job is not theirs."""
    given = specs[0].network if specs else None
    if given is None or given.bridge is None:
        return specs  # network isolation, or hosts sharing their machine's network
    remove_network(settings.home, specs[0].job_key or specs[0].job_name)
    hosts = specs[0].hosts
    job = overlay(settings.home, specs[0].job_name, hosts, nodes, settings.network_range)
    job = dataclasses.replace(job, resolv_conf=given.resolv_conf)
    return [dataclasses.replace(spec, network=job) for spec in specs]


def ray_hosts(settings: Settings, specs: list[HostSpec], emit: Emit) -> list[RayHost]:
    # The nodes reach the store through the server's gate, with a key of the job's hosts.
    group = RayHosts(settings, through_the_gate(settings, specs), emit)
    return [RayHost(group, index) for index in range(len(specs))]


class RayHost:
    """A host running in its actor, driven like a `TrainingHost`."""

    def __init__(self, group: RayHosts, index: int) -> None:
        self.group, self.index = group, index
        self.spec = group.specs[index]
        self.lost: str | None = None
        self._pump: threading.Thread | None = None
        self._closing = threading.Event()

    @property
    def name(self) -> str:
        return self.spec.host_name

    @property
    def actor(self) -> Any:
        return self.group.actors[self.index]

    @property
    def node(self) -> str:
        return self.group.nodes[self.index] if self.group.nodes else "?"

    def prepare(self, stop: StopControl) -> None:
        self.group.place(stop)
        if stop.requested:
            return
        self._pump = threading.Thread(target=self._forward, daemon=True)
        self._pump.start()
        reason = self._call("prepare", stop)
        if isinstance(reason, str):
            stop.request("Failed")
            raise HostFailed(reason)
        if self.lost:
            stop.request("Failed")
            raise HostFailed(f"InternalServerError: {self.lost}")

    def run(self, stop: StopControl) -> HostResult:
        value = self._call("run", stop)
        if self.lost or not isinstance(value, HostResult):
            stop.request("Failed")  # the job's other hosts end with it
            return HostResult(-1, None, None, self.lost or "its actor ended")
        if value.failure:
            stop.request("Failed")
        return value

    def finish(self) -> None:
        if self.lost or self._pump is None:
            return
        reason = self._call("finish", None)
        if isinstance(reason, str):
            raise OutputsFailed(reason)

    def close(self) -> None:
        import ray

        try:
            if self._pump is not None and not self.lost:
                ray.get(self.actor.close.remote(), timeout=CLOSE_SECONDS)
        except Exception as exc:  # a lost node took the host with it
            print(f"host {self.name} not closed: {exc}")
        finally:
            self._closing.set()
            if self._pump is not None:
                self._pump.join(timeout=CLOSE_SECONDS)
            self.group.released()

    def _call(self, method: str, stop: StopControl | None) -> Any:
        """Call the actor, passing on a stop requested meanwhile; None once the node is lost."""
        import ray

        ref = getattr(self.actor, method).remote()
        relayed = False
        while True:
            done, _ = ray.wait([ref], timeout=POLL_SECONDS)
            if done:
                try:
                    return ray.get(ref)
                except (ray.exceptions.ActorDiedError, ray.exceptions.ActorUnavailableError):
                    self._lose()
                    return None
            if stop is not None and stop.requested and not relayed:
                relayed = True
                self.actor.request_stop.remote(stop.reason or "Stopped")

    def _lose(self) -> None:
        self.lost = (
            f"host {self.name} was lost with its node {self.node} of the Ray cluster, as when "
            "an instance fails"
        )

    def _forward(self) -> None:
        """The actor's events, to the worker's recorder, until the host closes."""
        import ray

        while not self._closing.is_set():
            try:
                events = ray.get(self.actor.drain.remote(POLL_SECONDS))
            except ray.exceptions.RayError:
                return  # the actor is gone: its node was lost, or the host closed
            for event in events:
                self.group.emit(event)


def upload_ray_outputs(hosts: list[RayHost], emit: Emit) -> Artifacts:
    """The job's archives, made on the first host's node from every host's part."""
    import ray

    first, others = hosts[0], hosts[1:]
    parts = [(host.actor, host.spec.to_json()) for host in others]
    try:
        answer = ray.get(first.actor.upload_outputs.remote(parts))
    except ray.exceptions.RayError as exc:
        raise OutputsFailed(f"InternalServerError: could not upload outputs: {exc}") from exc
    if answer[0] != "ok":
        raise OutputsFailed(answer[1])
    return Artifacts(answer[1], answer[2])


Runner = Callable[[Settings, list[HostSpec], Emit], list[RayHost]]
