"""A node's serving agent: the one Ray actor per node that runs the endpoint instances placed
there (serving/ray_instances.py drives it from the endpoint's worker).

Each instance is the same `Instance` as on the server's machine, on a bridge of its own on this
node (an instance is a machine: nothing else of its endpoint is here). Its container's port is
reached from the network only through the instance's `Forwarder` on the node's address, which
asks for the instance's secret first. Its output lines wait here until the worker takes them
for the endpoint's log group.

The agent is detached and named after its node and openmaker's code (as the training agent,
training/host/ray_actor.py): the first endpoint placed on the node makes it, and it ends the
node's serving agents of other code (an upgrade's predecessors) once they hold no instance. An
instance whose endpoint's worker has ended without closing it (killed) is closed by the agent,
as Ray ends a gone driver's actors.

Imported by Ray's worker processes on every node: it needs openmaker installed there.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
import traceback
from typing import Any

from openmaker.runtime.network import JobNetwork
from openmaker.runtime.network import create as create_network
from openmaker.runtime.network import remove as remove_network
from openmaker.serving import multi_model
from openmaker.serving.forwarder import Forwarder
from openmaker.serving.image import ImageError
from openmaker.serving.instance import Instance, InstancePlan
from openmaker.serving.model_data import ModelDataError
from openmaker.settings import Settings
from openmaker.training.host.ray_actor import code_version, ended_ray_jobs, retire_others

AGENT_PREFIX = "openmaker:instances:"
# Lines kept per instance for the worker; older ones go first when it does not take them.
KEPT_LINES = 10_000
# How often the agent looks for instances whose endpoint's worker has ended.
ORPHAN_POLL_SECONDS = 2.0

Lines = tuple[str, int, list[str]]  # log stream, when (ms), lines


def agent_name(node_id: str) -> str:
    return f"{AGENT_PREFIX}{node_id}:{code_version()}"


class _Held:
    """One instance on this node: it, its bridge and its forwarder."""

    def __init__(
        self, instance: Instance, network: JobNetwork, key: str, owner: str, holds: str
    ) -> None:
        self.instance, self.network, self.network_key, self.owner = instance, network, key, owner
        self.holds = holds  # what its placement reserves on this node, said for a person
        # One per port of its containers (an inference pipeline's each have one), in order.
        self.forwarders: list[Forwarder] = []
        self.lines: collections.deque[Lines] = collections.deque(maxlen=KEPT_LINES)
        self.arrived = threading.Condition()

    def receiver(self, stream: str) -> Any:
        def on_lines(when: int, lines: list[str], size: int) -> None:
            with self.arrived:
                self.lines.append((stream, when, lines))
                self.arrived.notify_all()

        return on_lines


class InstanceAgent:
    def __init__(self) -> None:
        import ray

        self.node_id = ray.get_runtime_context().get_node_id()
        self._lock = threading.Lock()
        self._held: dict[str, _Held] = {}
        threading.Thread(target=self._watch, name="orphans", daemon=True).start()
        # An upgrade's agents end the node's agents of other code once they hold no instance.
        name = ray.get_runtime_context().get_actor_name() or agent_name(self.node_id)
        retiring = (AGENT_PREFIX, name, "instances")
        threading.Thread(target=retire_others, args=retiring, name="retire", daemon=True).start()

    def node(self) -> str:
        return self.node_id

    def instances(self) -> list[dict[str, str]]:
        """The instances held here: "endpoint/instance-id"; whose they are (`kind`: "endpoint"
        or "transform job", `name`, `variant`, `id`), what they hold, their forwarder's address."""
        with self._lock:
            held = list(self._held.values())
        return [
            {
                "instance": f"{h.instance.endpoint}/{h.instance.plan.id}",
                "kind": _kind(h.instance.owner),
                "name": h.instance.endpoint,
                "variant": h.instance.plan.variant,
                "id": h.instance.plan.id,
                "holds": h.holds,
                "forwarder": "{}:{}".format(*h.forwarders[0].address) if h.forwarders else "",
            }
            for h in held
        ]

    def open(
        self,
        key: str,
        settings: Settings,
        endpoint: str,
        owner: str,
        plan: InstancePlan,
        worker: str,
        holds: str = "",
    ) -> None:
        """Hold an instance of `endpoint` (its cgroups under `owner`), on a bridge of its own,
        for the endpoint's worker, Ray job `worker` (the agent's own job is its maker's);
        `holds`: what its placement reserves here, as `openmaker cluster` shows it."""
        # Of no kind of job: the recovery sweep of a server on this machine (serving/kind.py,
        # by the endpoint's own key) never takes it for a leftover of an endpoint of its own.
        network_key = f"ray-instance:{endpoint}:{plan.id}"
        remove_network(settings.home, network_key)  # left by an agent of a lost node
        network = create_network(settings, network_key, [plan.id], {})
        if network.bridge is None:
            raise RuntimeError(
                f"no network namespace of its own can be had on node {self.node_id}: "
                f"{network.reason}"
            )
        # Alone on its bridge: the first address there.
        instance = Instance(settings, endpoint, dataclasses.replace(plan, index=0), owner)
        with self._lock:
            self._held[key] = _Held(instance, network, network_key, worker, holds)

    def prepare(self, key: str) -> str | None:
        """Fetch its model data and pull its images; why not, for a FailureReason."""
        instance = self._get(key).instance
        try:
            instance.prepare()
        except ModelDataError as exc:
            return f"model: {exc}"
        except ImageError as exc:
            return f"image: {exc}"
        return None

    def start(self, key: str, listen: str, secret: bytes) -> list[str]:
        """Start its containers; the addresses ("host:port") on `listen` of the forwarders to
        its containers' ports (Instance.ports: an inference pipeline's, in order)."""
        held = self._get(key)
        instance = held.instance
        instance.start(held.network, held.receiver(instance.plan.stream), held.receiver)
        if not held.forwarders:
            host = instance.address.rpartition(":")[0]
            held.forwarders = [Forwarder(listen, (host, p), secret) for p in instance.ports()]
        return ["{}:{}".format(*forwarder.address) for forwarder in held.forwarders]

    def fetch_model(self, key: str, name: str, url: str) -> str | None:
        """A multi-model instance's model (serving/multi_model.py), into its folder here,
        read through the server's gate with its endpoint's key; why not, for the caller."""
        instance = self._get(key).instance
        try:
            multi_model.fetch_into(instance.folder, name, url, instance.settings.store)
        except ModelDataError as exc:
            return str(exc)
        return None

    def remove_model(self, key: str, name: str) -> None:
        """A multi-model instance's model unloaded: its files go."""
        multi_model.remove_from(self._get(key).instance.folder, name)

    def poll(self, key: str) -> int | None:
        container = self._get(key).instance.container
        return -1 if container is None else container.poll()

    def healthy(self, key: str) -> bool:
        return self._get(key).instance.healthy()

    def exit_reason(self, key: str, code: int) -> str:
        return self._get(key).instance.exit_reason(code)

    def oom_killed(self, key: str) -> bool:
        return self._get(key).instance.oom_killed()

    def usage(self, key: str) -> dict[str, float] | None:
        """Its utilization since the last call (serving/usage.py)."""
        return self._get(key).instance.usage()

    def lines(self, key: str, wait: float) -> list[Lines]:
        """The lines written since the last call (waiting up to `wait` seconds for some)."""
        held = self._get(key)
        with held.arrived:
            if not held.lines:
                held.arrived.wait(wait)
            taken = list(held.lines)
            held.lines.clear()
        return taken

    def stop(self, key: str, grace: float) -> None:
        """Stop its containers (SIGTERM, then SIGKILL after `grace`); it can start again."""
        self._get(key).instance.stop(grace)

    def close(self, key: str, grace: float) -> list[Lines]:
        """Stop it for good: its containers, forwarder, folder and bridge; its last lines."""
        with self._lock:
            held = self._held.pop(key, None)
        if held is None:
            return []
        try:
            for forwarder in held.forwarders:
                forwarder.close()
            held.instance.stop(grace)
            held.instance.remove()
        finally:
            remove_network(held.instance.settings.home, held.network_key)
        with held.arrived:
            return list(held.lines)

    def _get(self, key: str) -> _Held:
        with self._lock:
            return self._held[key]

    def _watch(self) -> None:
        """Close the instances whose endpoint's worker has ended (killed: it closed none)."""
        while True:
            time.sleep(ORPHAN_POLL_SECONDS)
            with self._lock:
                owners = {key: held.owner for key, held in self._held.items()}
                graces = {k: h.instance.settings.stop_grace_seconds for k, h in self._held.items()}
            if not owners or (dead := ended_ray_jobs()) is None:
                continue
            for key, owner in owners.items():
                if owner in dead:
                    try:
                        self.close(key, graces[key])
                    except Exception:
                        traceback.print_exc()


def _kind(owner: str) -> str:
    """Whose instance it is, by its owner's local key (ResourceKind.local_key)."""
    from openmaker.transform.kind import NETWORK_KEY_PREFIX as TRANSFORM

    return "transform job" if owner.startswith(TRANSFORM) else "endpoint"
