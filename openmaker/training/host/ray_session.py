"""One training host on a Ray node: a session of the node's agent (ray_actor.py).

The session drives the same `TrainingHost` a local worker drives in a thread, with the node's own
disk and sandbox. Its events wait in a bounded buffer that the job's worker drains (a flood of
output blocks the code, as it does locally); a stop comes in through `request_stop`. Methods
return plain values (a failure reason, a result) rather than raising: what crosses back to the
worker is data, never a traceback to unpickle. Everything one job gave its host (the spec: its
store key, its network) lives here and goes with the session.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tarfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from openmaker.instances import catalog
from openmaker.runtime.overlay import node_network, remove_node_network
from openmaker.training.host import jobtree
from openmaker.training.host.events import Event
from openmaker.training.host.jobtree import HostTree
from openmaker.training.host.outputs import MODEL, OUTPUT_DATA, pack_folders
from openmaker.training.host.spec import HostResources, HostSpec
from openmaker.training.host.training_host import (
    HostFailed,
    HostResult,
    OutputsFailed,
    StopControl,
    TrainingHost,
    upload_outputs,
)

# Events kept for the worker at most (bytes, roughly); the host's emit blocks beyond.
BUFFER_BYTES = 4 * 1024 * 1024
# A part of the job's outputs crosses between nodes in pieces of this size.
CHUNK_BYTES = 8 * 1024 * 1024
PARTS_DIR = "outputs-part"
# Another host of the job whose outputs are merged here: its agent, session key and spec.
Other = tuple[Any, str, dict[str, Any]]


def _size(event: Event) -> int:
    return int(getattr(event, "size", 0)) + 256


class HostSession:
    def __init__(self, spec: dict[str, Any]) -> None:
        plain = HostSpec.from_json(spec)
        # The node's own share: its CPUs, the instance type's memory, and the GPUs the job's
        # reservation holds on this node (their ids, found by the job's worker: the agent holds
        # none of its own).
        known = catalog().get(plain.instance_type)
        resources = HostResources(
            cpus=tuple(sorted(os.sched_getaffinity(0))),
            memory=known.memory if known else None,
            gpus=plain.resources.gpus if plain.resources is not None else (),
        )
        self.spec = dataclasses.replace(plain, resources=resources)
        # The job's network across its nodes: this node's part (its bridge for this host).
        self.unplaced: str | None = None
        network = self.spec.network
        if network is not None and network.overlay_vni is not None:
            try:
                key = plain.job_key or plain.job_name  # as the job's worker named its network
                network = node_network(
                    network, plain.settings.home, key, plain.host_name, plain.code_env
                )
                self.spec = dataclasses.replace(self.spec, network=network)
            except OSError as exc:
                self.unplaced = f"InternalServerError: {exc}"
        self.stop = StopControl()
        self._events: list[Event] = []
        self._bytes = 0
        self._discarding = False
        self._changed = threading.Condition()
        self._busy = 0  # prepare, run, finish or outputs under way
        self._idle = threading.Condition()
        self.host = TrainingHost(self.spec, self._emit)

    @property
    def name(self) -> str:
        return f"{self.spec.job_name}/{self.spec.host_name}"

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        with self._idle:
            self._busy += 1
        try:
            yield
        finally:
            with self._idle:
                self._busy -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: not self._busy, timeout=timeout)

    def _emit(self, event: Event) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._bytes < BUFFER_BYTES or self._discarding)
            if self._discarding:
                return
            self._events.append(event)
            self._bytes += _size(event)
            self._changed.notify_all()

    def drain(self, wait: float) -> list[Event]:
        """The events emitted since the last drain, waiting up to `wait` seconds for one."""
        with self._changed:
            self._changed.wait_for(lambda: bool(self._events), timeout=wait)
            events, self._events, self._bytes = self._events, [], 0
            self._changed.notify_all()
            return events

    def discard(self) -> None:
        """Drop the host's events from now on: nobody is left to read them."""
        with self._changed:
            self._discarding = True
            self._events, self._bytes = [], 0
            self._changed.notify_all()

    def request_stop(self, reason: str) -> None:
        self.stop.request(reason)

    def prepare(self) -> str | None:
        if self.unplaced is not None:
            return self.unplaced
        try:
            self.host.prepare(self.stop)
        except HostFailed as exc:
            return exc.reason
        return None

    def run(self) -> HostResult:
        return self.host.run(self.stop)

    def finish(self) -> str | None:
        try:
            self.host.finish()
        except OutputsFailed as exc:
            return exc.reason
        return None

    def close(self) -> None:
        try:
            self.host.close()
        finally:
            network = self.spec.network
            if network is not None and network.overlay_vni is not None:
                key = self.spec.job_key or self.spec.job_name
                remove_node_network(self.spec.settings.home, key, self.spec.host_name)

    def pack_part(self) -> list[str]:
        """Pack this host's `/opt/ml/model` and `/opt/ml/output/data` for the first host, which
        merges every host's into the job's archives; the names of the parts made."""
        made: list[str] = []
        tree = self.host.tree
        if tree is None:
            return made
        folder = self.spec.work_dir / PARTS_DIR
        for relative in (MODEL, OUTPUT_DATA):
            try:
                handle = tree.open(relative)
            except FileNotFoundError:
                continue
            except jobtree.NotAFolder as exc:
                consequence = "nothing in it is uploaded"
                jobtree.say_ignored(self.spec, self._emit, "/opt/ml", relative, exc, consequence)
                continue
            try:
                pack_folders([handle], folder / _part_name(relative))
            finally:
                os.close(handle)
            made.append(relative)
        return made

    def read_part(self, relative: str, offset: int) -> bytes:
        with open(self.spec.work_dir / PARTS_DIR / _part_name(relative), "rb") as part:
            part.seek(offset)
            return part.read(CHUNK_BYTES)

    def upload_outputs(self, others: Sequence[Other]) -> tuple[str, ...]:
        """The job's outputs, merged here from this host's folders and the parts of the
        `others` (agent, session key, spec): ("ok", model URI, output URI) or ("failed",
        reason)."""
        staging = self.spec.work_dir / PARTS_DIR
        copies: list[TrainingHost] = []
        try:
            for agent, key, spec in others:
                copies.append(self._copy_of(agent, key, HostSpec.from_json(spec), staging))
            artifacts = upload_outputs([self.host, *copies], self._emit)
            return ("ok", artifacts.model_uri, artifacts.output_uri)
        except OutputsFailed as exc:
            return ("failed", exc.reason)
        except Exception as exc:  # a part that could not be fetched or unpacked
            return ("failed", f"InternalServerError: could not gather the outputs: {exc}")
        finally:
            for copy in copies:
                if copy.tree is not None:
                    copy.tree.close()
            shutil.rmtree(staging, ignore_errors=True)

    def _copy_of(self, agent: Any, key: str, spec: HostSpec, staging: Path) -> TrainingHost:
        """Another host's output folders, fetched into this host's volume, as a host whose
        tree `upload_outputs` can read."""
        import ray

        work = staging / spec.host_name
        ml = work / "ml"
        ml.mkdir(parents=True)
        for relative in ray.get(agent.pack_part.remote(key)):
            archive = staging / f"{spec.host_name}-{_part_name(relative)}"
            with open(archive, "wb") as out:
                while chunk := ray.get(agent.read_part.remote(key, relative, out.tell())):
                    out.write(chunk)
            target = ml / relative
            target.mkdir(parents=True, exist_ok=True)
            with tarfile.open(archive) as tar:
                # Links stay links (as the host packed them); nothing lands outside the target.
                tar.extractall(target, filter="tar")
            archive.unlink()
        # No checkpoints of its own: only its output folders are read here.
        plan = dataclasses.replace(spec.plan, checkpoint=None)
        copy_spec = dataclasses.replace(spec, plan=plan, work_dir=work)
        copy = TrainingHost(copy_spec, self._emit)
        copy.tree = HostTree(copy_spec)
        return copy


def _part_name(relative: str) -> str:
    return relative.replace("/", "-") + ".tar.gz"
