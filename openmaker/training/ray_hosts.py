"""A job's hosts on a Ray cluster (OPENMAKER_EXECUTOR=ray), as seen from the job's worker.

The job's N hosts are one placement group, `STRICT_SPREAD` (one host per node: an instance is
a machine), each bundle sized from the instance-type catalog, or one unit of a node's own
resource named after the type (`ray start --resources '{"ml.m5.xlarge": 1}'`: that node stands
for one such instance). Each host runs in a session of its node's agent (host/ray_actor.py, one
long-lived actor per node, so that a job's start finds openmaker loaded there); `RayHost` is its
stand-in in the worker, with the shape of a `TrainingHost`, so that the worker drives local and
remote hosts alike. The group is asked for as soon as the worker makes the hosts: while the
cluster lacks room the job is `Pending` with what it waits for, and fails after
`OPENMAKER_RAY_WAIT_SECONDS`.

Each host is on its own node: the job's network spans them (runtime/overlay.py). The hosts
reach the store through the server's S3 gate with a key of the job's hosts
(ray_store.py), not this machine's folder.

A node lost mid-job (its agent dies) stops the job's other hosts and ends the job as an
infrastructure failure naming the node: restarted under its RetryStrategy, or failed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from openmaker.instances import catalog
from openmaker.runtime.network import remove as remove_network
from openmaker.runtime.overlay import overlay
from openmaker.settings import Settings
from openmaker.training.host.events import Emit, Event, LogLine, StatusChanged
from openmaker.training.host.spec import HostResources, HostSpec
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
# How long one look at a pending group waits for it (seconds; Ray answers at once when ready).
WAIT_SECONDS = 1
# A host's actor that does not close within this is killed with its processes.
CLOSE_SECONDS = 60.0
# How long `openmaker cluster` waits for an agent to say which hosts it runs.
ASK_SECONDS = 10.0


def bundle_for(instance_type: str, offered: dict[str, float]) -> dict[str, float]:
    """What one host of `instance_type` reserves on its node: one unit of the node resource of
    that name where nodes advertise it, else the catalog's vCPUs and memory; and the catalog's
    GPUs either way (they are given to the host by their ids: `bundle_gpus`)."""
    known = catalog().get(instance_type)
    gpus = {"GPU": float(known.gpus)} if known is not None and known.gpus else {}
    if offered.get(instance_type):
        return {instance_type: 1, **gpus}
    if known is None:  # ml.local and unknown types: a node of its own, whatever its size
        return {"CPU": 1}
    return {"CPU": float(known.cpus), "memory": float(known.memory), **gpus}


def bundle_gpus(
    group: PlacementGroup, bundle: dict[str, float], count: int
) -> list[tuple[str, ...]]:
    """The ids of the GPUs each of the group's `count` bundles holds on its node: Ray gives a
    task in a bundle the GPUs that bundle reserved, so a task per bundle asks for them all and
    says which it got (a Ray worker process per host: only for jobs with GPUs)."""
    if not bundle.get("GPU"):
        return [()] * count
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    asked = [
        ray.remote(ray.get_gpu_ids)
        .options(
            num_cpus=0,
            num_gpus=bundle["GPU"],
            scheduling_strategy=PlacementGroupSchedulingStrategy(group, index),
        )
        .remote()
        for index in range(count)
    ]
    return [tuple(str(gpu) for gpu in ids) for ids in ray.get(asked)]


class RayHosts:
    """The job's placement group and its hosts' sessions, shared by its hosts' stand-ins."""

    def __init__(self, settings: Settings, specs: list[HostSpec], emit: Emit) -> None:
        self.settings, self.specs, self.emit = settings, specs, emit
        self._lock = threading.Lock()
        self._placed: str | None = None  # None: not yet; "": placed; else why it failed
        self.group: PlacementGroup | None = None
        self.bundle: dict[str, float] = {}
        self.agents: list[Any] = []  # each host's node's agent
        self.keys: list[str] = []  # each host's session in it
        self.nodes: list[str] = []  # each host's node (its address)
        self._open = len(specs)
        # Loading Ray, joining the cluster and asking for the group take seconds: they start
        # now, while the job's worker does the rest of its start.
        self._asked: BaseException | None = None
        self._asking = threading.Thread(target=self._ask, name="ray-group", daemon=True)
        self._asking.start()

    def _ask(self) -> None:
        try:
            connect(self.settings)  # first: it loads Ray as a job's worker needs
            import ray
            from ray.util.placement_group import placement_group

            offered = ray.cluster_resources()  # type: ignore[no-untyped-call]
            self.bundle = bundle_for(self.specs[0].instance_type, offered)
            self.group = placement_group([self.bundle] * len(self.specs), strategy="STRICT_SPREAD")
        except BaseException as exc:  # told by place()
            self._asked = exc

    def place(self, stop: StopControl) -> None:
        """Reserve the job's nodes and open its hosts' sessions, once (HostFailed)."""
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

        self._asking.join()
        if self._asked is not None:
            raise self._asked
        assert self.group is not None
        instance_type, count, bundle = self.specs[0].instance_type, len(self.specs), self.bundle
        deadline = time.monotonic() + self.settings.ray_wait_seconds
        waiting = False
        while not self.group.wait(WAIT_SECONDS):
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
                # Also in the hosts' logs: a processing job's description has no status message.
                now = int(time.time() * 1000)
                for spec in self.specs:
                    line = f"openmaker: host {spec.host_name} waits for the Ray cluster: {wants}"
                    self.emit(LogLine(spec.host_name, now, line))
        node_ids, self.nodes = self._bundle_nodes()
        gpus = bundle_gpus(self.group, bundle, count)
        specs = across_nodes(self.settings, self.specs, self.nodes)
        self.specs = [
            # The node's agent gives the host its own CPUs and the type's memory.
            dataclasses.replace(spec, resources=HostResources(cpus=(), memory=None, gpus=ids))
            for spec, ids in zip(specs, gpus, strict=True)
        ]
        self.agents = [agent_on(node) for node in node_ids]
        owner = ray.get_runtime_context().get_job_id()
        self.keys = [f"{spec.job_name}:{spec.host_name}:{uuid.uuid4().hex}" for spec in self.specs]
        ray.get(
            [
                agent.open.remote(key, spec.to_json(), owner)
                for agent, key, spec in zip(self.agents, self.keys, self.specs, strict=True)
            ]
        )
        if waiting:
            self.emit(StatusChanged(SecondaryStatus.STARTING))
        now = int(time.time() * 1000)
        for spec, node in zip(self.specs, self.nodes, strict=True):
            line = f"openmaker: host {spec.host_name} runs on node {node} of the Ray cluster"
            self.emit(LogLine(spec.host_name, now, line))
        return ""

    def _bundle_nodes(self) -> tuple[list[str], list[str]]:
        """The node of each bundle of the (ready) group, in order: its id, its address."""
        from ray.util.placement_group import placement_group_table

        node_of = {n["NodeID"]: n["NodeManagerAddress"] for n in live_nodes()}
        placed = placement_group_table(self.group)["bundles_to_node_id"]
        ids = [placed[index] for index in range(len(self.specs))]
        return ids, [node_of.get(node, node) for node in ids]

    def released(self) -> None:
        """One host closed; the last one gives the group back."""
        with self._lock:
            self._open -= 1
            if self._open:
                return
        self._asking.join()
        if self.group is None:
            return
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(self.group)


def agent_on(node_id: str) -> Any:
    """The agent of the node (host/ray_actor.py), made by the first job that needs it."""
    from openmaker.training.host.ray_actor import NodeAgent, agent_name

    return node_agent(NodeAgent, agent_name(node_id), node_id)


def node_agent(agent: type, name: str, node_id: str) -> Any:
    """The detached actor `name` (of class `agent`) held on node `node_id`, made by the first
    caller that needs it: a node's agent of one kind (training hosts, serving instances)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from openmaker.training.host.ray_actor import MAX_CONCURRENCY, NAMESPACE

    return (
        ray.remote(agent)
        .options(
            name=name,
            namespace=NAMESPACE,
            get_if_exists=True,
            lifetime="detached",
            num_cpus=0,
            max_concurrency=MAX_CONCURRENCY,
            max_restarts=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        )
        .remote()
    )


def running_hosts() -> dict[str, list[str]]:
    """The hosts ("job/host") each node's agent runs, by node id; an agent that does not answer
    in time (its node lost, not yet seen dead) runs none."""
    import ray

    from openmaker.training.host.ray_actor import AGENT_PREFIX, NAMESPACE, agent_node

    asked: dict[Any, str] = {}  # the question to each agent: its node
    for name in ray.util.list_named_actors():
        if name.startswith(AGENT_PREFIX):
            agent = ray.get_actor(name, namespace=NAMESPACE)
            asked[agent.hosts.remote()] = agent_node(name)
    running: dict[str, list[str]] = {}
    if not asked:
        return running
    done, _ = ray.wait(list(asked), num_returns=len(asked), timeout=ASK_SECONDS)
    for ref in done:
        with contextlib.suppress(ray.exceptions.RayError):
            # A node may have an agent of other code too, until it retires (ray_actor.py).
            running.setdefault(asked[ref], []).extend(ray.get(ref))
    return running


def across_nodes(settings: Settings, specs: list[HostSpec], nodes: list[str]) -> list[HostSpec]:
    """The specs with the job's network across `nodes` (runtime/overlay.py) where the job has
    one of its own; each node makes its host's part. The bridge made on this machine for the
    job is not theirs."""
    given = specs[0].network if specs else None
    if given is None or given.bridge is None:
        return specs  # network isolation, or hosts sharing their machine's network
    key = specs[0].job_key or specs[0].job_name  # its kind's: a training job's may share its name
    remove_network(settings.home, key)
    job = overlay(settings.home, key, specs[0].hosts, nodes, settings.network_range)
    job = dataclasses.replace(job, resolv_conf=given.resolv_conf)
    return [dataclasses.replace(spec, network=job) for spec in specs]


def ray_hosts(settings: Settings, specs: list[HostSpec], emit: Emit) -> list[RayHost]:
    # The nodes reach the store through the server's gate, with a key of the job's hosts.
    group = RayHosts(settings, through_the_gate(settings, specs), emit)
    return [RayHost(group, index) for index in range(len(specs))]


class RayHost:
    """A host running in its node's agent, driven like a `TrainingHost`."""

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
    def agent(self) -> Any:
        return self.group.agents[self.index]

    @property
    def key(self) -> str:
        return self.group.keys[self.index]

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
            return HostResult(-1, None, None, self.lost or "its node's agent ended")
        if value.failure:
            stop.request("Failed")
        elif value.stopped:  # at its time limit, seen on its node: the job's other hosts too
            stop.request(value.stopped)
        return value

    def finish(self) -> None:
        if self.lost or self._pump is None:
            return
        reason = self._call("finish", None)
        if isinstance(reason, str):
            raise OutputsFailed(reason)

    def close(self) -> None:
        import ray

        left: list[Event] = []
        try:
            if self.group.keys:  # its session was opened (its node's agent forgets a lost one)
                left = ray.get(self.agent.close.remote(self.key), timeout=CLOSE_SECONDS)
        except Exception as exc:  # a lost node took the host with it
            print(f"host {self.name} not closed: {exc}")
        finally:
            self._closing.set()
            if self._pump is not None:
                self._pump.join(timeout=CLOSE_SECONDS)
            for event in left:
                self.group.emit(event)
            self.group.released()

    def _call(self, method: str, stop: StopControl | None) -> Any:
        """Call the host's session, passing on a stop requested meanwhile; None once the node is
        lost."""
        import ray

        ref = getattr(self.agent, method).remote(self.key)
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
                self.agent.request_stop.remote(self.key, stop.reason or "Stopped")

    def _lose(self) -> None:
        self.lost = (
            f"host {self.name} was lost with its node {self.node} of the Ray cluster, as when "
            "an instance fails"
        )

    def _forward(self) -> None:
        """The host's events, to the worker's recorder, until the host closes."""
        import ray

        while not self._closing.is_set():
            try:
                events = ray.get(self.agent.drain.remote(self.key, POLL_SECONDS))
            except ray.exceptions.ActorUnavailableError:  # out of reach for a moment
                self._closing.wait(POLL_SECONDS)
                continue
            except ray.exceptions.RayError:
                return  # the session is gone: its node was lost, or the host closed
            for event in events:
                self.group.emit(event)


def upload_ray_outputs(hosts: list[RayHost], emit: Emit) -> Artifacts:
    """The job's archives, made on the first host's node from every host's part."""
    import ray

    first, others = hosts[0], hosts[1:]
    parts = [(host.agent, host.key, host.spec.to_json()) for host in others]
    try:
        answer = ray.get(first.agent.upload_outputs.remote(first.key, parts))
    except ray.exceptions.RayError as exc:
        raise OutputsFailed(f"InternalServerError: could not upload outputs: {exc}") from exc
    if answer[0] != "ok":
        raise OutputsFailed(answer[1])
    return Artifacts(answer[1], answer[2])


Runner = Callable[[Settings, list[HostSpec], Emit], list[RayHost]]
