"""A node's agent: the one Ray actor per node that runs the hosts every job places there.

Each job's worker is a Ray driver (a Ray job) of its own, and Ray gives no job another job's
worker processes: an actor per host was a new Python process per host, importing openmaker, at
every job's start (seconds). The agent is detached and named after its node; the first job that
needs it makes it, and every later job's hosts open a session (ray_session.py) in its warm
process. The job's placement group still reserves each host's share of its node; the agent itself
reserves nothing.

An agent keeps the code it loaded: its name carries a digest of openmaker's code
(`openmaker:agent:<node>:<version>`), so that a server of other code makes agents of its own, and
each new agent retires the agents it finds on its node of other code once they run no host.

What a job gives its host (the spec: its store key, its network) lives in that host's session
only and goes when the session closes. A session whose job's worker has ended without closing it
(the worker killed) is stopped and closed by the agent, as Ray ends the actors of a driver gone.

Imported by Ray's worker processes on every node: it needs openmaker installed there.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import openmaker
from openmaker.runtime.overlay import node_networks, remove_node_network
from openmaker.store.location import forget_s3_clients
from openmaker.training.host.events import Event
from openmaker.training.host.ray_session import HostSession, Other
from openmaker.training.host.spec import HostSpec
from openmaker.training.host.training_host import HostResult

AGENT_PREFIX = "openmaker:agent:"
NAMESPACE = "openmaker"
# Calls at once: each host has a long one (prepare, run) and a drain in flight, and short ones.
MAX_CONCURRENCY = 256
# How often the agent looks for sessions whose job's worker has ended.
ORPHAN_POLL_SECONDS = 2.0
# A host stopped because its worker ended gets this long to end before it is closed anyway.
ORPHAN_GRACE_SECONDS = 120.0
# How long the sweep asks the other agents which hosts they run.
ASK_SECONDS = 10.0


def agent_name(node_id: str) -> str:
    return f"{AGENT_PREFIX}{node_id}:{code_version()}"


def agent_node(name: str) -> str:
    """The node id in an agent's name (of this version's or an earlier one's, which had none)."""
    return name.removeprefix(AGENT_PREFIX).split(":")[0]


def ended_ray_jobs() -> set[str] | None:
    """The ids of the cluster's Ray jobs that have ended (their workers' drivers gone); None
    when the cluster cannot tell now (the next look will)."""
    from ray._private import state

    try:
        return {job["JobID"] for job in state.jobs() if job["IsDead"]}  # type: ignore[no-untyped-call]
    except Exception as exc:
        print(f"could not look for ended workers: {exc}")
        return None


@functools.cache
def code_version() -> str:
    """A digest of openmaker's code as this process has it (every module's text): an upgrade, or
    an edited checkout, changes it."""
    root = Path(openmaker.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


class NodeAgent:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[str, HostSession] = {}
        self._names: dict[str, str] = {}  # key -> "job/host", from before its session exists
        self._owners: dict[str, str] = {}  # key -> the Ray job id of the worker driving it
        self._swept = False
        threading.Thread(target=self._watch, name="orphans", daemon=True).start()
        threading.Thread(target=self._retire_others, name="retire", daemon=True).start()

    def open(self, key: str, spec: dict[str, Any], owner: str) -> None:
        """A session for the host of `spec`, driven by the worker of Ray job `owner`."""
        plain = HostSpec.from_json(spec)
        if plain.network is not None and plain.network.overlay_vni is not None:
            # Out of its code's reach: every node of the cluster (overlay.py).
            spec = {**spec, "network": {**spec["network"], "overlay_cluster": _node_addresses()}}
        with self._lock:
            # By the job's key, as its bridge here is named (a processing job's has its kind's).
            self._names[key] = f"{plain.job_key or plain.job_name}/{plain.host_name}"
            self._owners[key] = owner
        if not self._swept and plain.network is not None and plain.network.overlay_vni is not None:
            self._swept = self._sweep(plain.settings.home)
        try:
            session = HostSession(spec)
        except BaseException:
            with self._lock:
                self._forget(key)
            raise
        with self._lock:
            self._sessions[key] = session

    def hosts(self) -> list[str]:
        """The hosts ("job/host") with a session here, opening ones included."""
        with self._lock:
            return sorted(self._names.values())

    def drain(self, key: str, wait: float) -> list[Event]:
        return self._session(key).drain(wait)

    def request_stop(self, key: str, reason: str) -> None:
        self._session(key).request_stop(reason)

    def prepare(self, key: str) -> str | None:
        session = self._session(key)
        with session.busy():
            return session.prepare()

    def run(self, key: str) -> HostResult:
        session = self._session(key)
        with session.busy():
            return session.run()

    def finish(self, key: str) -> str | None:
        session = self._session(key)
        with session.busy():
            return session.finish()

    def pack_part(self, key: str) -> list[str]:
        return self._session(key).pack_part()

    def read_part(self, key: str, relative: str, offset: int) -> bytes:
        return self._session(key).read_part(relative, offset)

    def upload_outputs(self, key: str, others: Sequence[Other]) -> tuple[str, ...]:
        session = self._session(key)
        with session.busy():
            return session.upload_outputs(others)

    def close(self, key: str) -> list[Event]:
        """Close the host and forget it; the events it emitted since the last drain."""
        with self._lock:
            session = self._sessions.get(key)
            if session is None:  # never opened, or closed already (its worker gone)
                self._forget(key)
                return []
        try:
            session.close()
        finally:
            with self._lock:
                self._forget(key)
        return session.drain(0)

    def _session(self, key: str) -> HostSession:
        with self._lock:
            return self._sessions[key]

    def _forget(self, key: str) -> None:
        self._sessions.pop(key, None)
        self._names.pop(key, None)
        self._owners.pop(key, None)
        if not self._names:  # the hosts' store keys go with the last of them
            forget_s3_clients()

    def _watch(self) -> None:
        """Stop and close the sessions whose job's worker has ended."""
        while True:
            time.sleep(ORPHAN_POLL_SECONDS)
            with self._lock:
                owners = dict(self._owners)
            if not owners or (dead := ended_ray_jobs()) is None:
                continue
            for key, owner in owners.items():
                if owner in dead:
                    with self._lock:
                        session = self._sessions.get(key)
                        self._owners.pop(key, None)
                    if session is not None:
                        threading.Thread(target=self._end_orphan, args=(key, session)).start()

    def _end_orphan(self, key: str, session: HostSession) -> None:
        print(f"host {session.name}: its job's worker ended; stopping it")
        session.discard()
        session.request_stop("Stopped")
        session.wait_idle(ORPHAN_GRACE_SECONDS)
        try:
            session.close()
        finally:
            with self._lock:
                self._forget(key)

    def _retire_others(self) -> None:
        retire_others(AGENT_PREFIX, _own_name(), "hosts")

    def _sweep(self, home: Path) -> bool:
        """Remove the bridges of hosts that no agent runs (lost with their node, which came
        back): no process on the node outlives them to do it. False: left for the next host."""
        import ray

        mine = _own_name()
        # The bridges first: a host whose bridge is listed was named to its agent before.
        bridges = node_networks(home)
        try:
            others: list[Any] = [
                ray.get_actor(name, namespace=NAMESPACE).hosts.remote()
                for name in ray.util.list_named_actors()
                if name.startswith(AGENT_PREFIX) and name != mine
            ]
            done: list[Any] = []
            left: list[Any] = []
            if others:
                done, left = ray.wait(others, num_returns=len(others), timeout=ASK_SECONDS)
            running = set(self.hosts())
            for listed in ray.get(done):
                running.update(listed)
        except Exception as exc:  # the cluster cannot tell now: leave them
            print(f"the node's leftover bridges are left for now: {exc}")
            return False
        if left:  # an agent that does not answer may run some of them
            print("the node's leftover bridges are left for now: an agent did not answer")
            return False
        for job, host in bridges:
            if f"{job}/{host}" not in running:
                remove_node_network(home, job, host)
        return True


def retire_others(prefix: str, mine: str, busy: str) -> None:
    """End the agents named `prefix<node>:<code>` of other code than `mine` (this agent's
    name) on this node, each once its method `busy` says it runs nothing. Those made after
    this one are left alone: this one is then the older. (The serving agents' too.)"""
    import ray

    node = ray.get_runtime_context().get_node_id()
    try:
        left = [
            name
            for name in ray.util.list_named_actors()
            if name.startswith(prefix)
            and name.removeprefix(prefix).split(":")[0] == node
            and name != mine
        ]
    except Exception as exc:  # the cluster cannot tell now: the next agent will
        print(f"could not look for agents of other code: {exc}")
        return
    while left:
        for name in list(left):
            try:
                agent: Any = ray.get_actor(name, namespace=NAMESPACE)
                running: list[Any] = ray.get(getattr(agent, busy).remote(), timeout=ASK_SECONDS)
                if running:
                    continue  # looked at again later
                ray.kill(agent)
                print(f"retired {name}, an agent of other code")
            except ValueError:  # gone already
                pass
            except Exception as exc:  # out of reach now
                print(f"could not retire {name} now: {exc}")
                continue
            left.remove(name)
        if left:
            time.sleep(ORPHAN_POLL_SECONDS)


def _node_addresses() -> list[str]:
    """The address of every node in the cluster's node table, whether alive or not."""
    import ray

    return sorted({node["NodeManagerAddress"] for node in ray.nodes()})  # type: ignore[no-untyped-call]


def _own_name() -> str:
    """This agent's name, as the worker that made it gave it (from the worker's code: this
    node's may differ)."""
    import ray

    context = ray.get_runtime_context()
    return context.get_actor_name() or agent_name(context.get_node_id())
