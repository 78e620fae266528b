"""The process that keeps one endpoint's instances serving, until the endpoint is deleted.

Started detached by the endpoint's service (serving/launcher.py), which sends it the endpoint's
name and settings on its standard input. It makes the endpoint's bridge, fetches each
instance's model data, starts each `serve` container in its own network namespace, and
reports `InService` once every instance answers `GET /ping`, or `Failed` with the instance that
did not and why. A container that ends while the endpoint serves is started again. SIGTERM
(DeleteEndpoint) stops the containers (SIGTERM, then SIGKILL after the grace), removes the
bridge and the instances' folders, and the endpoint's record.
"""

from __future__ import annotations

import json
import secrets
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from openmaker.jobs.db import EndpointRecord, Tag, writer_sessions
from openmaker.runtime.network import JobNetwork
from openmaker.runtime.network import create as create_network
from openmaker.runtime.network import remove as remove_network
from openmaker.serving import async_queue, async_runner, status
from openmaker.serving.clock import now
from openmaker.serving.image import ImageError, resolve
from openmaker.serving.instance import DEFAULT_STARTUP_SECONDS, Instance, InstancePlan
from openmaker.serving.kind import fail, log_group, network_key
from openmaker.serving.logs import EndpointLogs
from openmaker.serving.model_data import ModelDataError
from openmaker.serving.models import the_container
from openmaker.settings import Settings, from_json
from openmaker.shapes.locations import LocalPaths

# How often a serving instance's container is looked at (has it ended?).
WATCH_SECONDS = 1.0


class EndpointFailed(Exception):
    """The endpoint cannot serve; the message is its FailureReason."""


def main(stop: threading.Event) -> None:
    data = sys.stdin.read()
    if not data:  # a worker whose starter went away before sending an order
        return
    order = json.loads(data)
    run(from_json(order["settings"]), order["endpoint"], stop)


def plans(row: EndpointRecord) -> list[InstancePlan]:
    found: list[InstancePlan] = []
    for variant in row.config["ProductionVariants"]:
        model = row.models[variant["ModelName"]]
        _, container = the_container(model)
        try:
            # The owner's own process: the model was checked against the API's roots already.
            image = resolve(container["Image"], LocalPaths.anywhere())
        except ImageError as exc:
            raise EndpointFailed(
                f"The image of production variant {variant['VariantName']} cannot be served: {exc}"
            ) from None
        startup = variant.get("ContainerStartupHealthCheckTimeoutInSeconds")
        for _ in range(int(variant["InitialInstanceCount"])):
            found.append(
                InstancePlan(
                    variant=variant["VariantName"],
                    id=f"i-{secrets.token_hex(8)}{len(found):x}",
                    index=len(found),
                    container=container,
                    image=image,
                    startup_seconds=int(startup or DEFAULT_STARTUP_SECONDS),
                )
            )
    return found


class EndpointWorker:
    def __init__(self, settings: Settings, name: str, stop: threading.Event) -> None:
        self.settings, self.name, self.stop = settings, name, stop
        self.writers: sessionmaker[Session] = writer_sessions(settings)
        self.logs = EndpointLogs(self.writers, name, settings.log_limit_bytes)
        self.instances: list[Instance] = []
        self.network: JobNetwork | None = None
        self.async_runner: async_runner.AsyncRunner | None = None

    def run(self) -> None:
        try:
            row = self._take_over()
            if row is None:
                return
            self.instances = [Instance(self.settings, self.name, p) for p in plans(row)]
            self._start_all()
            if not self.stop.is_set():
                self._record(status.IN_SERVICE)
                self.async_runner = async_runner.start(
                    self.settings, self.name, row.config, lambda: self.instances, self.logs
                )
                self._serve()
        except EndpointFailed as exc:
            self._record(status.FAILED, str(exc))
        except Exception:
            traceback.print_exc()
            self._record(status.FAILED, f"InternalServerError: {traceback.format_exc(limit=1)}")
        finally:
            self._close()

    def _take_over(self) -> EndpointRecord | None:
        with self.writers() as session:
            row = session.get(EndpointRecord, self.name)
            if row is None or row.status in status.ENDED:
                return None
            row.worker_ready = True
            if row.stop_requested:  # deleted before this worker could be signalled
                self.stop.set()
            session.commit()
        return row

    def _start_all(self) -> None:
        hosts = [instance.plan.id for instance in self.instances]
        remove_network(self.settings.home, network_key(self.name))  # what a killed worker left
        network = create_network(self.settings, network_key(self.name), hosts, {})
        self.network = network
        if network.bridge is None:
            raise EndpointFailed(
                "openmaker serves endpoints with a network namespace per instance, which "
                f"cannot be had here: {network.reason}"
            )
        for instance in self.instances:
            plan = instance.plan
            try:
                instance.prepare()
            except ModelDataError as exc:
                raise EndpointFailed(
                    f"Failed to download model data for production variant {plan.variant} "
                    f"(instance {plan.id}): {exc}"
                ) from None
            if self.stop.is_set():
                return
            instance.start(network, self.logs.receiver(plan.stream))
        with ThreadPoolExecutor(len(self.instances)) as pool:
            reasons = list(pool.map(lambda i: i.wait_healthy(self.stop), self.instances))
        if self.stop.is_set():
            return
        for instance, reason in zip(self.instances, reasons, strict=True):
            if reason is not None:
                raise EndpointFailed(self._ping_failure(instance, reason))

    def _ping_failure(self, instance: Instance, why: str) -> str:
        plan = instance.plan
        message = (
            f"The primary container for production variant {plan.variant} did not pass the "
            f"ping health check: instance {plan.id}: {why}. See the log group "
            f"{log_group(self.name)}, stream {plan.stream}."
        )
        self.logs.note(plan.stream, f"[openmaker] {message}")
        return message

    def _serve(self) -> None:
        """Until deleted: a container that ends is started again (its instance taken out of
        the rotation until it answers /ping)."""
        assert self.network is not None
        while not self.stop.wait(WATCH_SECONDS):
            for instance in self.instances:
                container = instance.container
                code = container.poll() if container is not None else None
                if code is None:
                    continue
                stream = instance.plan.stream
                self.logs.note(
                    stream,
                    f"[openmaker] the container exited with status {code}; starting it again",
                )
                self._record(status.IN_SERVICE)  # its instance leaves the rotation
                instance.stop(self.settings.stop_grace_seconds)
                instance.start(self.network, self.logs.receiver(stream))
                reason = instance.wait_healthy(self.stop)
                if reason is not None and not self.stop.is_set():
                    self.logs.note(stream, f"[openmaker] after a restart: {reason}")
                self._record(status.IN_SERVICE)

    def _record(self, new_status: str, reason: str | None = None) -> None:
        with self.writers() as session:
            row = session.get(EndpointRecord, self.name)
            if row is None or row.status == status.DELETING:
                return
            if new_status == status.FAILED:
                fail(row, reason or "")
                row.instances = []
            else:
                if row.status != new_status:
                    row.status, row.last_modified_time = new_status, now()
                row.instances = [self._report(i) for i in self.instances]
            session.commit()

    def _report(self, instance: Instance) -> dict[str, Any]:
        container = instance.container
        alive = container is not None and container.poll() is None
        return {
            "variant": instance.plan.variant,
            "id": instance.plan.id,
            "address": instance.address,
            "healthy": alive and instance.healthy(),
        }

    def _close(self) -> None:
        if self.async_runner is not None:
            self.async_runner.close()
        grace = self.settings.stop_grace_seconds
        with ThreadPoolExecutor(max(1, len(self.instances))) as pool:
            list(pool.map(lambda i: i.stop(grace), self.instances))
        remove_network(self.settings.home, network_key(self.name))
        for instance in self.instances:
            instance.remove()
        self.logs.close()
        with self.writers() as session:
            row = session.get(EndpointRecord, self.name)
            if row is None:
                return
            if row.status == status.DELETING:
                async_queue.remove(async_queue.folder(self.settings, self.name))
                session.delete(row)
                session.query(Tag).filter(Tag.resource_arn == row.arn).delete()
            row.instances = []
            row.worker_pid = None
            session.commit()


def run(settings: Settings, name: str, stop: threading.Event) -> None:
    EndpointWorker(settings, name, stop).run()
