"""The runner of a transform job in its worker process (openmaker/jobs/worker_process.py).

It starts the job's instances — serving containers of its model (openmaker/serving/instance.py)
with `SAGEMAKER_BATCH=true`, on a bridge of the job's own; an inference pipeline's instance runs
each of its containers (serving/pipeline.py) — waits for each to answer `/ping`, spreads the
input objects over them, transforms each object (transformer.py) and records the job's end:
`Completed`, `Failed` naming the objects that failed, or `Stopped` (SIGTERM).
"""

from __future__ import annotations

import secrets
import shutil
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from openmaker.jobs import gate_keys, queue
from openmaker.jobs.db import TransformJobRecord, writer_sessions
from openmaker.jobs.executor import Order, executor_for
from openmaker.resources import KINDS
from openmaker.runtime.network import JobNetwork
from openmaker.runtime.network import create as create_network
from openmaker.runtime.network import remove as remove_network
from openmaker.runtime.usage import SAMPLE_SECONDS
from openmaker.serving import ray_instances
from openmaker.serving.clock import now
from openmaker.serving.image import ImageError, resolve
from openmaker.serving.instance import (
    DEFAULT_STARTUP_SECONDS,
    Instance,
    InstancePlan,
    pipeline_images,
)
from openmaker.serving.logs import EndpointLogs
from openmaker.serving.metrics import TRANSFORM_NAMESPACE, InvocationMetrics
from openmaker.serving.model_data import ModelDataError
from openmaker.serving.models import the_container
from openmaker.serving.ray_instances import RemoteInstance
from openmaker.serving.usage import UsageWatch
from openmaker.settings import Settings
from openmaker.shapes.locations import LocalPaths
from openmaker.store.errors import StoreError
from openmaker.store.keys import UnsafeKeyError
from openmaker.transform import capture, status
from openmaker.transform.filters import DataProcessing
from openmaker.transform.invoker import Invocation, Invoker
from openmaker.transform.kind import (
    LOG_GROUP,
    enter,
    finish,
    instances_dir,
    network_key,
    stream_name,
)
from openmaker.transform.objects import InputObject, input_objects, spread
from openmaker.transform.parameters import environment
from openmaker.transform.parameters import resolve as resolve_parameters
from openmaker.transform.transformer import ObjectTransformer, Setup, Stopped

# How many failed objects a FailureReason names (the rest are counted).
NAMED_FAILURES = 3


class JobFailed(Exception):
    """The job cannot go on; the message is its FailureReason."""


def run(order: Order, settings: Settings, stop_before_start: threading.Event) -> None:
    TransformWorker(settings, order.name, stop_before_start).run()


class TransformWorker:
    def __init__(self, settings: Settings, name: str, stop: threading.Event) -> None:
        self.settings, self.name, self.stop = settings, name, stop
        self.writers: sessionmaker[Session] = writer_sessions(settings)
        self.logs = EndpointLogs(self.writers, name, settings.log_limit_bytes, LOG_GROUP)
        self.instances: list[Instance] = []
        self.streams: dict[str, str] = {}
        self.network: JobNetwork | None = None
        # When the last object was done: the job's TransformEndTime (its instances' stop after
        # is not the transform's).
        self.transformed_at: datetime | None = None
        self.objects: list[InputObject] = []  # the input objects, once listed
        self.usage: UsageWatch | None = None  # the instances' utilization

    def run(self) -> None:
        final, reason = status.COMPLETED, None
        try:
            row = self._take_over()
            if row is None:
                return
            self._start_instances(row)
            self.usage = UsageWatch(
                self.name,
                SAMPLE_SECONDS,
                lambda: self.instances,
                InvocationMetrics(self.writers),
                TRANSFORM_NAMESPACE,
            ).start()
            failures = self._transform(row) if not self.stop.is_set() else []
            self.transformed_at = now()
            self._capture(row, failures)
            if failures:
                final, reason = status.FAILED, self._failure_reason(failures)
        except JobFailed as exc:
            final, reason = status.FAILED, str(exc)
        except Exception:
            traceback.print_exc()
            final = status.FAILED
            reason = f"InternalServerError: {traceback.format_exc(limit=1)}"
        self._close()
        if self.stop.is_set():
            final, reason = status.STOPPED, None
        self._record(final, reason)
        # Its share of the machine is free: the jobs that wait for it may start (new ones are
        # their creators' to start).
        queue.start_ready(self.settings, executor_for(self.settings), KINDS, new=False)

    def _take_over(self) -> TransformJobRecord | None:
        with self.writers() as session:
            row = session.get(TransformJobRecord, self.name)
            if row is None or row.status in status.ENDED:
                return None
            row.worker_ready = True
            if row.stop_requested:  # stopped before this worker could be signalled
                self.stop.set()
            enter(row, status.TRANSFORMING)
            row.transform_start_time = now()
            session.commit()
        return row

    def _plans(self, row: TransformJobRecord) -> list[InstancePlan]:
        _, container = the_container(row.model)
        try:
            # The owner's own process: the model was checked against the API's roots already.
            image = resolve(container["Image"], LocalPaths.anywhere())
            members = pipeline_images(row.model)
        except ImageError as exc:
            raise JobFailed(f"The model's image cannot be served: {exc}") from None
        request = row.request

        def batch(container: dict[str, Any]) -> dict[str, Any]:
            """The container with the job's environment (each of a pipeline's gets it)."""
            env = {
                **(container.get("Environment") or {}),
                **(request.get("Environment") or {}),
                **environment(request),
            }
            return {**container, "Environment": env}

        pipeline = tuple((replace(m, container=batch(m.container)), i) for m, i in members)
        count = int(request["TransformResources"]["InstanceCount"])
        return [
            InstancePlan(
                variant=self.name,
                id=f"i-{secrets.token_hex(8)}{index:x}",
                index=index,
                container=batch(container),
                image=image,
                pipeline=pipeline,
                startup_seconds=DEFAULT_STARTUP_SECONDS,
                # What a node of the Ray cluster reserves for it (ray_instances.place).
                instance_type=request["TransformResources"]["InstanceType"],
            )
            for index in range(count)
        ]

    def _start_instances(self, row: TransformJobRecord) -> None:
        plans = self._plans(row)
        key = network_key(self.name)
        remove_network(self.settings.home, key)  # what a killed worker left
        network = create_network(self.settings, key, [p.id for p in plans], {})
        self.network = network
        if network.bridge is None:
            raise JobFailed(
                "openmaker runs transform jobs with a network namespace per instance, which "
                f"cannot be had here: {network.reason}"
            )
        epoch = int(time.time())
        remote = self._on_ray(plans, key)
        if remote:
            try:
                members = ["TransformResources"] * len(remote)
                ray_instances.place(self.settings, remote, members, self.stop)
            except ray_instances.NoRoom as exc:
                raise JobFailed(str(exc)) from None
        for index, plan in enumerate(plans):
            instance = remote[index] if remote else Instance(self.settings, self.name, plan, key)
            # Under the job's folder, not an endpoint's.
            instance.folder = instances_dir(self.settings, self.name) / plan.id
            self.instances.append(instance)
            stream = stream_name(self.name, plan.id, epoch)
            self.streams[plan.id] = stream
            try:
                instance.prepare()
            except ModelDataError as exc:
                raise JobFailed(f"Failed to download model data: {exc}") from None
            if self.stop.is_set():
                return
            instance.start(network, self.logs.receiver(stream))
        with ThreadPoolExecutor(len(self.instances)) as pool:
            reasons = list(pool.map(lambda i: i.wait_healthy(self.stop), self.instances))
        for instance, reason in zip(self.instances, reasons, strict=True):
            if reason is not None and not self.stop.is_set():
                message = (
                    f"The container of instance {instance.plan.id} did not pass the ping "
                    f"health check: {reason}. See the log group {LOG_GROUP}, stream "
                    f"{self.streams[instance.plan.id]}."
                )
                self.logs.note(self.streams[instance.plan.id], f"[openmaker] {message}")
                raise JobFailed(message)

    def _on_ray(self, plans: list[InstancePlan], key: str) -> list[RemoteInstance]:
        """Under the Ray executor, the job's instances on the cluster, one per node
        (serving/ray_instances.py); none on this machine."""
        if self.settings.executor != "ray" or not all(ray_instances.can_run(p) for p in plans):
            return []
        containers = [m.container for m, _ in plans[0].pipeline] or [plans[0].container]
        nodes = ray_instances.store_key(self.settings, key, containers)
        return [RemoteInstance(self.settings, nodes, self.name, plan, key) for plan in plans]

    def _transform(self, row: TransformJobRecord) -> list[tuple[InputObject, str, str]]:
        """Every object through the instances; the objects that failed, why, and where."""
        request = row.request
        source = request["TransformInput"]["DataSource"]["S3DataSource"]
        try:
            objects = input_objects(source, self.settings.store)
        except (StoreError, UnsafeKeyError) as exc:
            raise JobFailed(f"The input data could not be read: {exc}") from None
        self.objects = objects
        output = request["TransformOutput"]
        config = request.get("ModelClientConfig") or {}
        invocation = Invocation(
            request["TransformInput"].get("ContentType"),
            output.get("Accept"),
            float(config.get("InvocationsTimeoutInSeconds", 600)),
            int(config.get("InvocationsMaxRetries", 3)),
        )
        chain = [m for m, _ in self.instances[0].plan.pipeline]
        invokers = [Invoker(i.address, invocation, chain) for i in self.instances]
        parameters = resolve_parameters(request, invokers[0].execution_parameters())
        setup = Setup(
            split_type=request["TransformInput"].get("SplitType", "None"),
            assemble_with=output.get("AssembleWith", "None"),
            output_path=output["S3OutputPath"],
            parameters=parameters,
            processing=DataProcessing(
                request.get("DataProcessing"),
                request["TransformInput"].get("ContentType"),
                output.get("Accept"),
            ),
            store=self.settings.store,
            scratch=self._scratch(),
        )
        shares = spread(objects, len(self.instances))
        failures: list[tuple[InputObject, str, str]] = []
        lock = threading.Lock()

        def one_instance(index: int) -> None:
            instance, share = self.instances[index], shares[index]
            stream = self.streams[instance.plan.id]
            transformer = ObjectTransformer(setup, invokers[index], self.stop)

            def one_object(item: InputObject) -> None:
                if self.stop.is_set():
                    return
                try:
                    why = transformer.transform(item)
                except Stopped:
                    return
                if why is not None:
                    self.logs.note(stream, f"[openmaker] {item.location.uri}: {why}")
                    with lock:
                        failures.append((item, why, stream))

            try:
                # Several objects at once: small objects keep the instance's
                # MaxConcurrentTransforms requests in flight too (the transformer's pool
                # bounds them).
                with ThreadPoolExecutor(parameters.max_concurrent) as objects:
                    list(objects.map(one_object, share))
            finally:
                transformer.close()
                invokers[index].close()

        done = threading.Event()
        # A stop ends the containers and aborts the requests in flight: they end at once, not at
        # their timeout.
        watcher = threading.Thread(target=self._stop_on_request, args=(done, invokers), daemon=True)
        watcher.start()
        try:
            with ThreadPoolExecutor(len(self.instances)) as pool:
                list(pool.map(one_instance, range(len(self.instances))))
        finally:
            done.set()
            watcher.join()
        return sorted(failures, key=lambda f: f[0].location.key)

    def _capture(
        self, row: TransformJobRecord, failures: list[tuple[InputObject, str, str]]
    ) -> None:
        """DataCaptureConfig: the manifests of what was transformed (transform/capture.py)."""
        config = row.request.get("DataCaptureConfig")
        if config is None or self.stop.is_set():
            return
        failed = {item.location.key for item, _, _ in failures}
        done = [o for o in self.objects if o.location.key not in failed]
        started = row.transform_start_time or now()
        output_path = row.request["TransformOutput"]["S3OutputPath"]
        try:
            capture.write(config, self.name, started, done, output_path, self.settings.store)
        except capture.CaptureError as exc:
            raise JobFailed(str(exc)) from None

    def _scratch(self) -> Path:
        """Where outputs are written until they are whole (removed with the instances)."""
        folder = instances_dir(self.settings, self.name) / "outputs"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _stop_on_request(self, done: threading.Event, invokers: list[Invoker]) -> None:
        while not done.is_set():
            if self.stop.wait(0.2):
                grace = self.settings.stop_grace_seconds
                for instance in self.instances:
                    instance.stop(grace)
                # A container killed as its network goes may never close its connections.
                for invoker in invokers:
                    invoker.abort()
                return

    def _failure_reason(self, failures: list[tuple[InputObject, str, str]]) -> str:
        named = [f"{item.location.uri} ({why})" for item, why, _ in failures[:NAMED_FAILURES]]
        more = len(failures) - len(named)
        streams = ", ".join(sorted({stream for _, _, stream in failures}))
        return (
            f"ClientError: transforming failed for {'; '.join(named)}"
            + (f"; and {more} more objects" if more else "")
            + f". No output was written for them. See the log group {LOG_GROUP}, "
            f"streams {streams}."
        )

    def _close(self) -> None:
        if self.usage is not None:
            self.usage.close()
            self.usage.metrics.flush()
        grace = self.settings.stop_grace_seconds
        with ThreadPoolExecutor(max(1, len(self.instances))) as pool:
            list(pool.map(lambda i: i.stop(grace), self.instances))
        remove_network(self.settings.home, network_key(self.name))
        for instance in self.instances:
            instance.remove()
        if self.settings.executor == "ray":
            gate_keys.revoke_job(self.settings.home, ray_instances.gate_job(network_key(self.name)))
        shutil.rmtree(instances_dir(self.settings, self.name) / "outputs", ignore_errors=True)
        self.logs.close()

    def _record(self, final: str, reason: str | None) -> None:
        with self.writers() as session:
            row = session.get(TransformJobRecord, self.name)
            if row is None or row.status in status.ENDED:
                return
            if self.transformed_at is not None and row.transform_start_time is not None:
                row.transform_end_time = self.transformed_at
            finish(row, final, reason)
            session.commit()
