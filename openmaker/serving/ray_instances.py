"""An endpoint's instances on a Ray cluster (OPENMAKER_EXECUTOR=ray), as seen from its worker.

Each fleet the worker starts (at creation, an update's new fleet, instances added, replacements)
is one placement group, `STRICT_SPREAD` (one instance per node: an instance is a machine), each
bundle sized from the instance-type catalog as a training host's is (training/ray_hosts.py
`bundle_for`). A fleet the cluster has no room for within `OPENMAKER_RAY_WAIT_SECONDS` is
refused as the local capacity refuses it: the endpoint fails, an update leaves the old fleet
serving.

Each instance runs in its node's serving agent (serving/ray_agent.py); `RemoteInstance` stands
for it in the worker with the shape of an `Instance`, so that the worker, its health watch and
the async runner look after local and remote instances alike. Its `address` is a loopback port
of a `Presenter` (serving/forwarder.py), which carries each connection to the instance's
forwarder on its node, the instance's secret sent first: the proxy reaches it unchanged. An
inference pipeline's containers each have a pair of their own, the presenters at the containers'
ports on a loopback address of the instance's own, where the proxy calls each container. Its
output comes back line by line to the endpoint's log group.

The node reads the model data through the server's S3 gate with a key of the endpoint's own,
reaching its model data alone (read-only), revoked when the worker ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from openmaker.jobs import gate_keys
from openmaker.jobs.gate_keys import Place
from openmaker.runtime.images import Cancelled, never
from openmaker.runtime.logs import OnLines
from openmaker.runtime.network import JobNetwork
from openmaker.serving.forwarder import Presenter, new_secret
from openmaker.serving.image import ImageError
from openmaker.serving.instance import Instance, InstancePlan, ping
from openmaker.serving.model_data import ModelDataError
from openmaker.serving.pipeline import ContainerGroup
from openmaker.settings import Settings
from openmaker.store.location import S3Endpoint
from openmaker.training.ray_cluster import connect, describe_bundle, live_nodes, nodes_fitting
from openmaker.training.ray_hosts import bundle_for, node_agent

if TYPE_CHECKING:
    from ray.util.placement_group import PlacementGroup

# How long one look at a pending group waits for it (Ray answers at once when it is ready).
WAIT_SECONDS = 1
# A call to an agent that takes longer than this is taken for its node's loss.
CALL_SECONDS = 30.0
# How long a utilization sample is waited for (serving/usage.py samples every few seconds).
USAGE_SECONDS = 2.0
# How long the worker waits for an instance's lines at a time.
LINES_SECONDS = 0.5
# An inference pipeline's presenters listen at an address of 127.64.0.0/10 (loopback, far from
# 127.0.0.1), picked at random until its ports are free there.
LOOPBACK_FROM = int(ipaddress.ip_address("127.64.0.1"))
LOOPBACK_SPAN = 2**22 - 2
LOOPBACK_TRIES = 20
# How long `running_instances` waits for the agents' answers.
ASK_SECONDS = 10.0
# The gate key's holder (gate_keys.mint): the endpoint's instances'.
HOLDER = "instances"


class NoRoom(Exception):
    """The cluster has no room for the fleet; the message says what was missing."""


class _Group:
    """A fleet's placement group, removed once its last instance has gone."""

    def __init__(self, group: PlacementGroup, count: int) -> None:
        self.group, self._left = group, count
        self._lock = threading.Lock()

    def released(self) -> None:
        with self._lock:
            self._left -= 1
            if self._left:
                return
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(self.group)


def can_run(plan: InstancePlan) -> bool:
    """Whether the instance can run on another node: each can (a multi-model instance's models
    are fetched there by its node's agent, `AgentFetcher`)."""
    return True


class AgentFetcher:
    """A multi-model instance's fetches (serving/multi_model.py `Fetcher`), asked of its node's
    serving agent from the server's proxy: the model is read on the node, through the server's
    S3 gate with the endpoint's read-only key, into the instance's folder there."""

    def __init__(self, settings: Settings, held_by: dict[str, str]) -> None:
        self.settings, self.agent, self.key = settings, held_by["agent"], held_by["key"]

    def fetch(self, name: str, url: str) -> None:
        why = self._ask("fetch_model", name, url, seconds=24 * 3600.0)
        if why:
            raise ModelDataError(str(why))

    def remove(self, name: str) -> None:
        with contextlib.suppress(ModelDataError):  # its node lost: its files went with it
            self._ask("remove_model", name, seconds=CALL_SECONDS)

    def _ask(self, method: str, *args: str, seconds: float) -> Any:
        import ray

        from openmaker.training.host.ray_actor import NAMESPACE

        connect(self.settings)
        try:
            agent = ray.get_actor(self.agent, namespace=NAMESPACE)
            return ray.get(getattr(agent, method).remote(self.key, *args), timeout=seconds)
        except (ValueError, ray.exceptions.RayError) as exc:
            raise ModelDataError(
                f"the instance's node of the Ray cluster did not answer ({type(exc).__name__})"
            ) from None


def place(
    settings: Settings, fleet: list[RemoteInstance], members: list[str], stop: threading.Event
) -> None:
    """Reserve a node for each instance of `fleet` (`members`: the request member asking for
    each, for messages), one per node; NoRoom after OPENMAKER_RAY_WAIT_SECONDS."""
    import ray
    from ray.util.placement_group import (
        placement_group,
        placement_group_table,
        remove_placement_group,
    )

    connect(settings)
    offered = ray.cluster_resources()  # type: ignore[no-untyped-call]
    bundles = [bundle_for(i.plan.instance_type, offered) for i in fleet]
    group = placement_group(bundles, strategy="STRICT_SPREAD")
    deadline = time.monotonic() + settings.ray_wait_seconds
    while not group.wait(WAIT_SECONDS):
        if stop.is_set() or time.monotonic() > deadline:
            remove_placement_group(group)
            if stop.is_set():
                raise NoRoom("the endpoint was deleted while it waited for the cluster")
            raise NoRoom(_no_room(settings, fleet, members, bundles))
    node_of = {n["NodeID"]: n["NodeManagerAddress"] for n in live_nodes()}
    placed = placement_group_table(group)["bundles_to_node_id"]
    shared = _Group(group, len(fleet))
    for index, instance in enumerate(fleet):
        node = placed[index]
        instance.placed(shared, node, node_of.get(node, ""), describe_bundle(bundles[index]))


def _no_room(
    settings: Settings, fleet: list[RemoteInstance], members: list[str], bundles: list[Any]
) -> str:
    wanted: dict[tuple[str, str], int] = {}
    for instance, member in zip(fleet, members, strict=True):
        asked = (instance.plan.instance_type, member)
        wanted[asked] = wanted.get(asked, 0) + 1
    asked_for = ", ".join(f"{n} x {kind} for {member}" for (kind, member), n in wanted.items())
    fitting = nodes_fitting(bundles[0])
    return (
        f"Unable to provision the requested ML compute capacity ({asked_for}): "
        f"InsufficientInstanceCapacity on the Ray cluster, one instance per node, each "
        f"{describe_bundle(bundles[0])}; {fitting} node{'s' if fitting != 1 else ''} "
        f"{'has' if fitting == 1 else 'have'} room for one now (waited "
        f"{settings.ray_wait_seconds:g} s, OPENMAKER_RAY_WAIT_SECONDS)"
    )


def store_key(settings: Settings, owner: str, models: list[dict[str, Any]]) -> Settings:
    """The settings the nodes get: the store through the server's gate, with a new key that
    reads the model data of `models` (containers) alone, recorded for `owner` (the local key
    of the endpoint or transform job); unchanged without a gate."""
    gate = settings.store.gate_url
    if not gate:
        return settings.for_jobs()
    places = [Place(uri, is_folder=False, write=False) for uri in _model_data(models)]
    key = gate_keys.mint(
        settings.home,
        gate_job(owner),
        places,
        settings.store.endpoint,
        settings.store.retry_seconds,
        holder=HOLDER,
    )
    through = S3Endpoint(gate, key.access_key_id, key.secret_access_key, None, settings.region)
    return dataclasses.replace(settings.for_jobs(), s3_endpoint=through, gate_url=None)


def gate_job(owner: str) -> str:
    """The name the keys of the instances of the endpoint or transform job whose local key is
    `owner` are recorded under (a training job's name has no '/')."""
    return f"instances/{owner}"


def _model_data(containers: list[dict[str, Any]]) -> list[str]:
    found = []
    for container in containers:
        if url := container.get("ModelDataUrl"):
            found.append(url)
        source = (container.get("ModelDataSource") or {}).get("S3DataSource")
        if source is not None:
            found.append(source["S3Uri"])
        submit = (container.get("Environment") or {}).get("SAGEMAKER_SUBMIT_DIRECTORY", "")
        if submit.startswith("s3://"):
            found.append(submit)
    return found


def agent_on(node_id: str) -> Any:
    """The serving agent of the node (serving/ray_agent.py), made by the first that needs it."""
    from openmaker.serving.ray_agent import InstanceAgent, agent_name

    return node_agent(InstanceAgent, agent_name(node_id), node_id)


def running_instances() -> dict[str, list[dict[str, str]]]:
    """The instances each node's serving agent holds (ray_agent.py `instances`), by node id; an
    agent that does not answer in time (its node lost, not yet seen dead) holds none."""
    import ray

    from openmaker.serving.ray_agent import AGENT_PREFIX
    from openmaker.training.host.ray_actor import NAMESPACE

    asked: dict[Any, str] = {}  # the question to each agent: its node
    for name in ray.util.list_named_actors():
        if name.startswith(AGENT_PREFIX):
            with contextlib.suppress(ValueError):  # gone meanwhile
                agent = ray.get_actor(name, namespace=NAMESPACE)
                asked[agent.instances.remote()] = name.removeprefix(AGENT_PREFIX).split(":")[0]
    held: dict[str, list[dict[str, str]]] = {}
    if not asked:
        return held
    done, _ = ray.wait(list(asked), num_returns=len(asked), timeout=ASK_SECONDS)
    for ref in done:
        with contextlib.suppress(ray.exceptions.RayError):
            # A node may have an agent of other code too, until it retires (ray_agent.py).
            held.setdefault(asked[ref], []).extend(_described(i) for i in ray.get(ref))
    return held


def _described(held: dict[str, str]) -> dict[str, str]:
    """An instance as an agent says it; an agent of earlier code says "endpoint/id" alone."""
    name, _, instance = held["instance"].partition("/")
    return {"kind": "endpoint", "name": name, "variant": "", "id": instance, "holds": "", **held}


class RemoteContainer:
    """The instance's containers on its node, looked after as one process."""

    def __init__(self, instance: RemoteInstance) -> None:
        self.instance = instance

    def poll(self) -> int | None:
        code: int | None = self.instance.call("poll", lost=-1)
        return code

    def stop(self, grace: float) -> int:
        self.instance.call("stop", grace, lost=None, seconds=grace + CALL_SECONDS)
        return 0


class RemoteInstance(Instance):
    """An instance running in its node's serving agent, driven like an `Instance`."""

    def __init__(
        self, settings: Settings, node_settings: Settings, endpoint: str, plan: InstancePlan,
        owner: str,
    ) -> None:  # fmt: skip
        super().__init__(settings, endpoint, plan, owner)
        self.node_settings = node_settings
        self.key = f"{endpoint}:{plan.id}:{uuid.uuid4().hex}"
        self.secret = new_secret()
        self.group: _Group | None = None
        self.node_id = self.node = self.holds = ""
        self.agent: Any = None
        self.lost: str | None = None
        # One per port of its containers, as the node's forwarders (an inference pipeline's
        # containers each have one).
        self.presenters: list[Presenter] = []
        self._opened = False
        self._pump: threading.Thread | None = None
        self._closing = threading.Event()
        self._receivers: tuple[OnLines, Callable[[str], OnLines] | None] | None = None

    def placed(self, group: _Group, node_id: str, node: str, holds: str = "") -> None:
        """On node `node_id` (address `node`), its share of `group` (`holds`, for a person)."""
        self.group, self.node_id, self.node, self.holds = group, node_id, node, holds
        self.agent = agent_on(node_id)

    def held_by(self) -> dict[str, str]:
        """Its node's serving agent (actor name) and its key there (AgentFetcher's)."""
        from openmaker.serving.ray_agent import agent_name

        return {"agent": agent_name(self.node_id), "key": self.key} if self.node_id else {}

    def call(self, method: str, *args: Any, lost: Any, seconds: float = CALL_SECONDS) -> Any:
        """Call the instance in its agent; `lost` once its node is gone (or does not answer)."""
        import ray

        if self.lost is not None:
            return lost
        try:
            return ray.get(getattr(self.agent, method).remote(self.key, *args), timeout=seconds)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
            self.lost = (
                f"instance {self.plan.id} was lost with its node {self.node} of the Ray "
                f"cluster ({type(exc).__name__})"
            )
            return lost
        except ray.exceptions.RayTaskError as exc:  # closed meanwhile, or failed there
            print(f"instance {self.plan.id}: {method} failed on node {self.node}: {exc}")
            return lost

    def prepare(self, cancelled: Cancelled = never) -> None:
        import ray

        assert self.agent is not None, "placed first"
        worker = ray.get_runtime_context().get_job_id()
        opened = self.agent.open.remote(
            self.key, self.node_settings, self.endpoint, self.owner, self.plan, worker, self.holds
        )
        ray.get(opened, timeout=CALL_SECONDS)
        self._opened = True
        # Fetching the model data and pulling the image take as long as they take.
        why = self.call("prepare", lost="lost", seconds=24 * 3600.0)
        if why == "lost":
            raise ModelDataError(self.lost or "its node was lost")
        if isinstance(why, str):
            kind, _, reason = why.partition(": ")
            raise (ImageError if kind == "image" else ModelDataError)(reason)

    def start(
        self,
        network: JobNetwork,
        on_lines: OnLines,
        receiver: Callable[[str], OnLines] | None = None,
    ) -> None:
        """Start its containers on its node; `network` (the worker's) is not theirs."""
        self.ready = False
        self._receivers = (on_lines, receiver)
        forwarders: list[str] = self.call("start", self.node, self.secret, lost=[])
        if not self.presenters and forwarders:
            self.presenters = self._present(forwarders)
            self.address = "{}:{}".format(*self.presenters[0].address)
        self.container = ContainerGroup([RemoteContainer(self)])
        if self._pump is None:
            said = (
                f"[openmaker] instance {self.plan.id} runs on node {self.node} of the Ray cluster"
            )
            on_lines(int(time.time() * 1000), [said], len(said))
            self._pump = threading.Thread(target=self._forward_lines, daemon=True)
            self._pump.start()

    def _present(self, forwarders: list[str]) -> list[Presenter]:
        """A presenter per forwarder. An inference pipeline's at an address of its own on
        loopback, each at its container's own port there: the proxy reaches a pipeline's
        container at the instance's host and that port (serving/proxy.py), as locally."""
        targets = [(host, int(port)) for host, _, port in (f.rpartition(":") for f in forwarders)]
        if not self.plan.pipeline:
            return [Presenter(target, self.secret) for target in targets]
        for _ in range(LOOPBACK_TRIES):
            host = str(ipaddress.ip_address(LOOPBACK_FROM + secrets.randbelow(LOOPBACK_SPAN)))
            made: list[Presenter] = []
            try:
                for target, port in zip(targets, self.ports(), strict=True):
                    made.append(Presenter(target, self.secret, (host, port)))
            except OSError:  # a port taken there: another address
                for presenter in made:
                    presenter.close()
                continue
            return made
        raise OSError(f"no loopback address with ports {self.ports()} free for its containers")

    def healthy(self) -> bool:
        """Whether `GET /ping` answers 200 through its node's forwarders (from each of an
        inference pipeline's containers)."""
        if not self.presenters:
            return False
        return all(ping(*presenter.address) for presenter in self.presenters)

    def exit_reason(self, code: int) -> str:
        reason: str = self.call("exit_reason", code, lost="")
        return reason or self.lost or f"its container exited with status {code}"

    def usage(self) -> dict[str, float] | None:
        """Measured by its agent; an answer that does not come in time is no sample (it never
        makes the instance lost, as a failed call does)."""
        import ray

        if self.lost is not None or self.agent is None:
            return None
        try:
            answer = ray.get(self.agent.usage.remote(self.key), timeout=USAGE_SECONDS)
        except Exception:  # closed meanwhile, lost, or busy: no sample this time
            return None
        return dict(answer) if answer else None

    def oom_killed(self) -> bool:
        return bool(self.call("oom_killed", lost=False))

    def stop(self, grace: float) -> None:
        self.ready = False
        if self.container is not None:
            self.container.stop(grace)
            self.container = None

    def remove(self) -> None:
        """Its containers, forwarder, folder and bridge on its node go; its placement too once
        its fleet's last instance has gone."""
        if self._opened:
            grace = self.settings.stop_grace_seconds
            left = self.call("close", grace, lost=[], seconds=grace + CALL_SECONDS)
            self._deliver(left)
        self._closing.set()
        if self._pump is not None:
            self._pump.join(timeout=CALL_SECONDS)
        for presenter in self.presenters:
            presenter.close()
        if self.group is not None:
            self.group.released()
            self.group = None

    def _forward_lines(self) -> None:
        """Its containers' lines, to the endpoint's log group, until it is removed."""
        while not self._closing.is_set() and self.lost is None:
            self._deliver(self.call("lines", LINES_SECONDS, lost=[]))

    def _deliver(self, taken: list[tuple[str, int, list[str]]]) -> None:
        if self._receivers is None:
            return
        on_lines, receiver = self._receivers
        for stream, when, lines in taken:
            if stream != self.plan.stream and receiver is not None:
                receiver(stream)(when, lines, sum(len(line) for line in lines))
            else:
                on_lines(when, lines, sum(len(line) for line in lines))
