"""One training host inside a Ray actor, on the node the job's placement group gave it.

The actor drives the same `TrainingHost` a local worker drives in a thread, with the node's own
disk and sandbox. Its events wait in a bounded buffer that the job's worker drains (a flood of
output blocks the code, as it does locally); a stop comes in through `request_stop`. Methods
return plain values (a failure reason, a result) rather than raising: what crosses back to the
worker is data, never a traceback to unpickle.

Imported by Ray's worker processes on every node: it needs openmaker installed there.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tarfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from openmaker.instances import catalog
from openmaker.runtime.overlay import node_network, node_networks, remove_node_network
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


def _size(event: Event) -> int:
    return int(getattr(event, "size", 0)) + 256


class HostActor:
    def __init__(self, spec: dict[str, Any]) -> None:
        import ray

        plain = HostSpec.from_json(spec)
        # The node's own share: its CPUs, the instance type's memory, the GPUs Ray gave it.
        known = catalog().get(plain.instance_type)
        resources = HostResources(
            cpus=tuple(sorted(os.sched_getaffinity(0))),
            memory=known.memory if known else None,
            gpus=tuple(str(int(g)) for g in ray.get_gpu_ids()),
        )
        self.spec = dataclasses.replace(plain, resources=resources)
        # The job's network across its nodes: this node's part (its bridge for this host).
        self.unplaced: str | None = None
        network = self.spec.network
        if network is not None and network.overlay_vni is not None:
            _sweep_node(plain.settings.home)
            try:
                network = node_network(
                    network, plain.settings.home, plain.job_name, plain.host_name, plain.code_env
                )
                self.spec = dataclasses.replace(self.spec, network=network)
            except OSError as exc:
                self.unplaced = f"InternalServerError: {exc}"
        self.stop = StopControl()
        self._events: list[Event] = []
        self._bytes = 0
        self._changed = threading.Condition()
        self.host = TrainingHost(self.spec, self._emit)

    def node(self) -> str:
        import ray

        return str(ray.get_runtime_context().get_node_id())

    def _emit(self, event: Event) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._bytes < BUFFER_BYTES)
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
                remove_node_network(
                    self.spec.settings.home, self.spec.job_name, self.spec.host_name
                )

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

    def upload_outputs(self, others: Sequence[tuple[Any, dict[str, Any]]]) -> tuple[str, ...]:
        """The job's outputs, merged here from this host's folders and the parts of the
        `others` (actor, spec): ("ok", model URI, output URI) or ("failed", reason)."""
        staging = self.spec.work_dir / PARTS_DIR
        copies: list[TrainingHost] = []
        try:
            for actor, spec in others:
                copies.append(self._copy_of(actor, HostSpec.from_json(spec), staging))
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

    def _copy_of(self, actor: Any, spec: HostSpec, staging: Path) -> TrainingHost:
        """Another host's output folders, fetched into this host's volume, as a host whose
        tree `upload_outputs` can read."""
        import ray

        work = staging / spec.host_name
        ml = work / "ml"
        ml.mkdir(parents=True)
        for relative in ray.get(actor.pack_part.remote()):
            archive = staging / f"{spec.host_name}-{_part_name(relative)}"
            with open(archive, "wb") as out:
                while chunk := ray.get(actor.read_part.remote(relative, out.tell())):
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


def _sweep_node(home: Path) -> None:
    """Remove the bridges of hosts whose actor is gone (lost with their node, which came back):
    no node-side process outlives them to do it."""
    import ray

    for job, host in node_networks(home):
        try:
            ray.get_actor(f"openmaker:{job}:{host}", namespace="openmaker")
        except ValueError:  # no such actor alive in the cluster
            remove_node_network(home, job, host)
        except Exception as exc:  # the cluster cannot tell now: the next host's sweep will
            print(f"the bridge of {job}/{host} is left for now: {exc}")


def _part_name(relative: str) -> str:
    return relative.replace("/", "-") + ".tar.gz"
