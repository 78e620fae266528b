"""The process that keeps one endpoint's instances serving, until the endpoint is deleted.

Started by the queue through the executor (openmaker/jobs/worker_process.py calls `run`). It
makes the endpoint's bridge, reserves each instance's share of the machine
(serving/placement.py), fetches its model data, starts its `serve` container in a network
namespace of its own, and reports `InService` once every instance answers `GET /ping`, or
`Failed` saying which instance did not and why. A shadow variant's instances
(serving/shadow.py) are started, watched and retired as the production variant's are. While it
serves:
- a container that ends is started again (its instance out of the rotation until it answers
  /ping again); so is one that stays alive but fails its periodic pings (serving/health.py);
- an update (serving/updates.py) starts a new fleet beside the old one, moves the traffic once
  every new instance is healthy, then retires the old instances: out of the route first, their
  invocations under way finished (asynchronous ones within their own timeout,
  serving/async_runner.py), then stopped. A new fleet that fails is removed and the old one
  goes on serving, the reason in FailureReason;
- a serverless variant's instances start with its invocations, each joining the route once it
  answers /ping (serving/serverless.py).
SIGTERM (DeleteEndpoint) stops the containers (SIGTERM, then SIGKILL after the grace), removes
the bridge, the instances' folders and cgroups, and the endpoint's record.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import socket
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from openmaker.jobs import gate_keys
from openmaker.jobs.db import EndpointRecord, Tag, writer_sessions
from openmaker.jobs.executor import Order
from openmaker.runtime.network import JobNetwork
from openmaker.runtime.network import create as create_network
from openmaker.runtime.network import remove as remove_network
from openmaker.runtime.usage import SAMPLE_SECONDS
from openmaker.runtime.volume import unmount_under
from openmaker.serving import (
    async_queue,
    async_runner,
    health,
    placement,
    ray_instances,
    serverless,
    shadow,
    status,
    updates,
    usage,
)
from openmaker.serving.clock import now
from openmaker.serving.deployment import Deployment
from openmaker.serving.image import ImageError, resolve
from openmaker.serving.instance import (
    DEFAULT_STARTUP_SECONDS,
    Instance,
    InstancePlan,
    pipeline_images,
)
from openmaker.serving.kind import fail, log_group, network_key
from openmaker.serving.logs import EndpointLogs
from openmaker.serving.metrics import InvocationMetrics
from openmaker.serving.model_data import ModelDataError
from openmaker.serving.models import the_container
from openmaker.serving.proxy import ROUTE_SECONDS
from openmaker.serving.ray_instances import RemoteInstance
from openmaker.settings import Settings
from openmaker.shapes.locations import LocalPaths

# How often the serving instances are looked at (has a container ended? an update come?).
WATCH_SECONDS = 1.0
# How often an instance that is starting is pinged.
PING_EVERY_SECONDS = 0.2
# Past this, no invocation proxy routes by a route read before traffic moved (each keeps one
# for ROUTE_SECONDS).
ROUTE_CHANGE_SECONDS = ROUTE_SECONDS + 0.5
# A bridge gives its instances addresses .2 to .254.
MAX_INDEXES = 253


class EndpointFailed(Exception):
    """The endpoint (or its update) cannot serve; the message is its FailureReason."""


class NoCapacity(EndpointFailed):
    """The instances do not fit on the machine now."""


def run(order: Order, settings: Settings, stop: threading.Event) -> None:
    """Run a worker's order (openmaker/jobs/worker_process.py)."""
    EndpointWorker(settings, order.name, stop).run()


class EndpointWorker:
    def __init__(self, settings: Settings, name: str, stop: threading.Event) -> None:
        self.settings, self.name, self.stop = settings, name, stop
        self.writers: sessionmaker[Session] = writer_sessions(settings)
        self.logs = EndpointLogs(self.writers, name, settings.log_limit_bytes)
        self.live: list[Instance] = []  # in the route (those healthy)
        self.starting: list[Instance] = []  # a new fleet, not yet in the route
        self.network: JobNetwork | None = None
        self.indexes: set[int] = set()  # the instances' indexes on the bridge, in use
        self.async_runner: async_runner.AsyncRunner | None = None
        self.health: health.HealthWatch | None = None
        self.usage: usage.UsageWatch | None = None  # the instances' utilization
        # Serverless variants: when a cold start of each last failed (time.time()) and how many
        # failed in a row; when each of their instances started.
        self.cold_failed: dict[str, tuple[float, int]] = {}
        self.started_at: dict[str, float] = {}
        # Serverless instances starting (in `live`, not yet in the route): by id, when each
        # must answer /ping (time.monotonic()) and when its cold start began (perf_counter()).
        self.cold: dict[str, tuple[float, float]] = {}
        self.metrics = InvocationMetrics(self.writers)  # their ModelSetupTime
        # Under Ray: the settings the instances' nodes get, by the model data they read.
        self.node_settings: dict[str, Settings] = {}
        # A canary or linear update's new fleet while both are in the route (its instance ids).
        self.green: set[str] = set()

    def run(self) -> None:
        try:
            row = self._take_over()
            if row is None:
                return
            self._make_network()
            fleet = self._fleet(row.config, row.models)
            self._launch(fleet)
            self.live, self.starting = fleet, []
            if not self.stop.is_set():
                self._record(status.IN_SERVICE)
                self.async_runner = async_runner.start(
                    self.settings, self.name, row.config, lambda: self.live, self.logs, self.writers
                )
                every = self.settings.health_check_seconds
                self.health = health.HealthWatch(every, lambda: self.live).start()
                self.usage = usage.UsageWatch(
                    self.name, SAMPLE_SECONDS, lambda: self.live, self.metrics
                ).start()
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

    def _make_network(self) -> None:
        remove_network(self.settings.home, network_key(self.name))  # what a killed worker left
        unmount_under(self.settings.home / "endpoints" / self.name)
        network = create_network(self.settings, network_key(self.name), [], {})
        self.network = network
        if network.bridge is None:
            raise EndpointFailed(
                "openmaker serves endpoints with a network namespace per instance, which "
                f"cannot be had here: {network.reason}"
            )

    # -- fleets ---------------------------------------------------------------------------

    def _fleet(
        self,
        config: dict[str, Any],
        models: dict[str, Any],
        counts: dict[str, int] | None = None,
    ) -> list[Instance]:
        """New instances for `config`'s variants (`counts`: how many of each, else the
        config's)."""
        found: list[Instance] = []
        on_ray = self._on_ray(config, models, counts)
        for variant in shadow.every_variant(config):
            name = variant["VariantName"]
            count = updates.initial_count(variant) if counts is None else counts.get(name, 0)
            if count == 0:
                continue
            model = models[variant["ModelName"]]
            _, container = the_container(model)
            try:
                # The owner's own process: the model was checked against the API's roots.
                image = resolve(container["Image"], LocalPaths.anywhere())
                members = pipeline_images(model)
            except ImageError as exc:
                raise EndpointFailed(
                    f"The image of production variant {name} cannot be served: {exc}"
                ) from None
            startup = variant.get("ContainerStartupHealthCheckTimeoutInSeconds")
            for _ in range(count):
                plan = InstancePlan(
                    variant=name,
                    id=f"i-{secrets.token_hex(8)}",
                    index=self._free_index(),
                    container=container,
                    image=image,
                    startup_seconds=int(startup or DEFAULT_STARTUP_SECONDS),
                    instance_type=variant.get("InstanceType", serverless.PLACEMENT_TYPE),
                    pipeline=members,
                    memory=serverless.memory_bytes(variant),
                    volume_gb=variant.get("VolumeSizeInGB"),
                )
                owner = network_key(self.name)
                if on_ray is not None and ray_instances.can_run(plan):
                    found.append(RemoteInstance(self.settings, on_ray, self.name, plan, owner))
                else:
                    found.append(Instance(self.settings, self.name, plan, owner))
        return found

    def _on_ray(
        self, config: dict[str, Any], models: dict[str, Any], counts: dict[str, int] | None
    ) -> Settings | None:
        """Under the Ray executor, the settings the instances' nodes get (a key of the
        endpoint's own to the model data of the variants started); None on this machine."""
        if self.settings.executor != "ray":
            return None
        containers: list[dict[str, Any]] = []
        for variant in shadow.every_variant(config):
            if counts is None or counts.get(variant["VariantName"]):
                model = models[variant["ModelName"]]
                containers += model.get("Containers") or [the_container(model)[1]]
        # One key per set of model data for the worker's life (revoked when it ends), not one
        # per instance started (serverless cold starts, replacements).
        wanted = json.dumps(containers, sort_keys=True)
        if wanted not in self.node_settings:
            self.node_settings[wanted] = ray_instances.store_key(
                self.settings, network_key(self.name), containers
            )
        return self.node_settings[wanted]

    def _free_index(self) -> int:
        index = next((i for i in range(MAX_INDEXES) if i not in self.indexes), None)
        if index is None:
            raise EndpointFailed(f"an endpoint has at most {MAX_INDEXES} instances at once")
        self.indexes.add(index)
        return index

    def _launch(self, fleet: list[Instance]) -> None:
        """Reserve, prepare and start `fleet`, and wait until each instance answers /ping
        (the live fleet looked after meanwhile); EndpointFailed says why one did not."""
        self._start_fleet(fleet)
        reasons = self._wait_healthy(fleet)
        for instance, reason in zip(fleet, reasons, strict=True):
            if reason is not None and not self.stop.is_set():
                raise EndpointFailed(self._ping_failure(instance, reason))

    def _start_fleet(self, fleet: list[Instance]) -> None:
        """Reserve, prepare and start `fleet` (`starting` until it joins `live`)."""
        self.starting = fleet
        wanted = [
            placement.Wanted(
                i.plan.id,
                i.plan.instance_type,
                f"ProductionVariant {i.plan.variant}",
                i.plan.memory,
            )
            for i in fleet
        ]
        remote = [
            (i, w) for i, w in zip(fleet, wanted, strict=True) if isinstance(i, RemoteInstance)
        ]
        here = [w for i, w in zip(fleet, wanted, strict=True) if not isinstance(i, RemoteInstance)]
        shares: dict[str, placement.Share] = {}
        try:
            if remote:  # on the Ray cluster
                instances, members = [i for i, _ in remote], [w.member for _, w in remote]
                ray_instances.place(self.settings, instances, members, self.stop)
            if here or not remote:
                shares = placement.reserve(self.settings, self.writers, self.name, here)
        except (placement.InsufficientCapacity, ray_instances.NoRoom) as exc:
            raise NoCapacity(str(exc)) from None
        for instance in fleet:
            instance.share = shares.get(instance.plan.id)
            plan = instance.plan
            try:
                instance.prepare(self.stop.is_set)
            except ModelDataError as exc:
                raise EndpointFailed(
                    f"Failed to download model data for production variant {plan.variant} "
                    f"(instance {plan.id}): {exc}"
                ) from None
            except ImageError as exc:
                if self.stop.is_set():
                    return  # deleted while its image was pulled: the pull was interrupted
                raise EndpointFailed(
                    f"Failed to pull the image of production variant {plan.variant}: {exc}"
                ) from None
            if self.stop.is_set():
                return
            receiver = self.logs.receiver
            instance.start(self._network_for(instance), receiver(plan.stream), receiver)

    def _network_for(self, instance: Instance) -> JobNetwork:
        """The endpoint's network, with the instance's address on it."""
        network = self.network
        assert network is not None and network.gateway is not None
        address = ipaddress.IPv4Address(network.gateway) + 1 + instance.plan.index
        network = replace(network, addresses={**network.addresses, instance.plan.id: str(address)})
        self.network = network
        return network

    def _wait_healthy(self, fleet: list[Instance]) -> list[str | None]:
        """Each instance's failure to answer /ping in time (None: it did)."""
        reasons: dict[str, str | None] = {}
        deadlines = {i.plan.id: time.monotonic() + i.plan.startup_seconds for i in fleet}
        watched = time.monotonic()
        while not self.stop.is_set() and len(reasons) < len(fleet):
            waiting = [i for i in fleet if i.plan.id not in reasons]
            with ThreadPoolExecutor(len(waiting)) as pool:
                for instance, reason in zip(waiting, pool.map(_ping_once, waiting), strict=True):
                    if reason is not None or instance.ready:
                        reasons[instance.plan.id] = reason
                    elif time.monotonic() >= deadlines[instance.plan.id]:
                        reasons[instance.plan.id] = (
                            "its container did not answer GET /ping with 200 within "
                            f"{instance.plan.startup_seconds} seconds"
                        )
            if time.monotonic() - watched >= WATCH_SECONDS:
                watched = time.monotonic()
                self._watch_live()
            self.stop.wait(PING_EVERY_SECONDS)
        return [reasons.get(i.plan.id, "the endpoint was deleted while it started") for i in fleet]

    def _ping_failure(self, instance: Instance, why: str) -> str:
        plan = instance.plan
        message = (
            f"The primary container for production variant {plan.variant} did not pass the "
            f"ping health check: instance {plan.id}: {why}. See the log group "
            f"{log_group(self.name)}, stream {plan.stream}."
        )
        self.logs.note(plan.stream, f"[openmaker] {message}")
        return message

    # -- serving --------------------------------------------------------------------------

    def _serve(self) -> None:
        """Until deleted: look after the instances, and carry out the updates asked for."""
        while not self.stop.wait(PING_EVERY_SECONDS if self.cold else WATCH_SECONDS):
            self._watch_live()
            row = self._read()
            if row is not None and row.status == status.IN_SERVICE:
                self._replace_lost(row)
                self._scale_serverless(row)
            if row is None or row.status != status.UPDATING:
                continue
            if row.pending_update is not None:
                self._update(row)
            elif row.desired_variants is not None:
                self._resize(row)

    def _watch_live(self) -> None:
        """A container that ended starts again; one starting joins the rotation once it
        answers /ping."""
        changed = False
        for instance in self.live:
            if instance.plan.id in self.cold:
                continue  # a serverless cold start, looked after by _serverless_started
            container = instance.container
            code = container.poll() if container is not None else None
            if isinstance(instance, RemoteInstance) and instance.lost:
                continue  # replaced on another node by the serving loop (_replace_lost)
            if code is not None:
                why = " (killed for going over its memory limit)" if instance.oom_killed() else ""
                self.logs.note(
                    instance.plan.stream,
                    f"[openmaker] the container exited with status {code}{why}; starting it again",
                )
                instance.stop(self.settings.stop_grace_seconds)
                receiver = self.logs.receiver
                instance.start(
                    self._network_for(instance), receiver(instance.plan.stream), receiver
                )
                changed = True
            elif self.health is not None and (hung := self.health.failing(instance)):
                self._replace_hung(instance, hung)
                changed = True
            elif not instance.ready and instance.healthy():
                instance.ready = changed = True
        if changed:
            self._record(None)

    def _replace_hung(self, instance: Instance, why: str) -> None:
        """Out of the rotation first, then its container replaced by a new one."""
        self.logs.note(
            instance.plan.stream,
            f"[openmaker] instance {instance.plan.id} failed its health check: {why}; taken out "
            "of the rotation and its container replaced",
        )
        instance.ready = False
        self._record(None)
        instance.stop(self.settings.stop_grace_seconds)
        receiver = self.logs.receiver
        instance.start(self._network_for(instance), receiver(instance.plan.stream), receiver)
        if self.health is not None:
            self.health.forget(instance)

    def _replace_lost(self, row: EndpointRecord) -> None:
        """An instance lost with its node of the Ray cluster: out of the route, and another
        started in its place on a node with room (or the endpoint says why not)."""
        for lost in [i for i in self.live if isinstance(i, RemoteInstance) and i.lost]:
            self.logs.note(lost.plan.stream, f"[openmaker] {lost.lost}; replacing it")
            self.live = [i for i in self.live if i is not lost]
            self._record(None)
            self._stop([lost])
            variant = lost.plan.variant
            try:
                fleet = self._fleet(row.config, row.models, {variant: 1})
                self._launch(fleet)
            except EndpointFailed as exc:
                failed, self.starting = self.starting, []
                self._stop(failed)
                message = f"{lost.lost}, and no instance could take its place: {exc}"

                def note(record: EndpointRecord, message: str = message) -> None:
                    record.failure_reason = message

                self._record(None, change=note)
                continue
            if self.stop.is_set():
                return
            self.live, self.starting = self.live + fleet, []
            self._record(None)

    def _update(self, row: EndpointRecord) -> None:
        """UpdateEndpoint: blue/green, the traffic moved in the deployment's steps, or rolling."""
        asked = row.pending_update or {}
        plan = Deployment.from_json(asked.get("deployment"))
        deadline = None if plan.timeout_seconds is None else time.monotonic() + plan.timeout_seconds
        if plan.batch is not None:
            done = self._roll(row, asked, plan, deadline)
        else:
            done = self._blue_green(asked, plan, deadline)
        if done is None or self.stop.is_set():
            return
        fleet, old = done
        self.live, self.starting, self.green = fleet, [], set()

        def switch(record: EndpointRecord) -> None:
            record.config, record.models = asked["config"], asked["models"]
            record.request = {**record.request, "EndpointConfigName": asked["EndpointConfigName"]}
            record.pending_update = record.desired_variants = None
            record.failure_reason = None

        self._record(None, change=switch)
        if plan.termination_wait_seconds > 0:  # TerminationWaitInSeconds: the old fleet kept
            self._bake(plan.termination_wait_seconds, None)
        self._retire(old)
        self._record(status.IN_SERVICE)

    def _blue_green(
        self, asked: dict[str, Any], plan: Deployment, deadline: float | None
    ) -> tuple[list[Instance], list[Instance]] | None:
        """The new fleet started, then given the traffic step by step: (new fleet, old fleet)
        once it has all but the final step, None if it failed (the old fleet serving)."""
        try:
            fleet = self._fleet(asked["config"], asked["models"], updates.counts(asked["config"]))
            self._launch(fleet)
        except EndpointFailed as exc:
            self._abandon(str(exc), "UpdateEndpoint")
            return None
        if self.stop.is_set():
            return None
        old = self.live
        for share in plan.steps[:-1]:  # each step but the last, then its wait
            self._shift(old, fleet, share)
            if not self._bake(plan.wait_seconds, deadline):
                if self.stop.is_set():
                    return None
                self.live, self.starting, self.green = old, [], set()
                self._record(None, change=_no_shift)
                self._retire(fleet)
                self._abandon(_timed_out(plan), "UpdateEndpoint")
                return None
        return fleet, old

    def _roll(
        self,
        row: EndpointRecord,
        asked: dict[str, Any],
        plan: Deployment,
        deadline: float | None,
    ) -> tuple[list[Instance], list[Instance]] | None:
        """A rolling update: a batch of new instances healthy and in the route, then as many
        old ones retired, and so on: (new fleet, old instances left) once all are new, None
        if it was rolled back."""
        assert plan.batch is not None
        (variant,) = asked["config"]["ProductionVariants"]
        name, total = variant["VariantName"], int(variant["InitialInstanceCount"])
        old, fleet = list(self.live), list[Instance]()
        retired = 0
        while len(fleet) < total:
            if fleet and not self._bake(plan.wait_seconds, deadline):
                if self.stop.is_set():
                    return None
                self._roll_back(row, old, fleet, retired, _timed_out(plan), plan)
                return None
            size = min(plan.batch, total - len(fleet))
            try:
                batch = self._fleet(asked["config"], asked["models"], {name: size})
                self._launch(batch)
            except EndpointFailed as exc:
                self._roll_back(row, old, fleet, retired, str(exc), plan)
                return None
            if self.stop.is_set():
                return None
            fleet += batch
            leaving, old = old[:size], old[size:]
            self._shift(old, fleet, len(fleet) / (len(fleet) + len(old)))
            self._retire(leaving)
            retired += len(leaving)
        return fleet, old

    def _roll_back(
        self,
        row: EndpointRecord,
        old: list[Instance],
        new: list[Instance],
        retired: int,
        reason: str,
        plan: Deployment,
    ) -> None:
        """A rolling update that failed: the old configuration's retired instances start
        again, `RollbackMaximumBatchSize` at a time (all at once without one), each batch
        taking the place of as many new instances, which serve until then; the rest go."""
        failed, self.starting = self.starting, []
        self._stop([i for i in failed if i not in new])
        (variant,) = row.config["ProductionVariants"]
        kept, left = list(new), retired
        while left > 0 and not self.stop.is_set():
            size = min(plan.rollback_batch or left, left)
            try:
                again = self._fleet(row.config, row.models, {variant["VariantName"]: size})
                self._launch(again)
            except EndpointFailed as exc:
                reason += f"; {left} old instances could not start again: {exc}"
                break
            if self.stop.is_set():
                return
            old = old + again
            leaving, kept = kept[:size], kept[size:]
            self._shift(old, kept, len(kept) / (len(kept) + len(old)))
            self._retire(leaving)
            left -= size
        self.live, self.green = old, set()
        self._record(None, change=_no_shift)
        self._retire(kept)
        self._abandon(reason, "UpdateEndpoint")

    def _shift(self, old: list[Instance], new: list[Instance], share: float) -> None:
        """Both fleets in the route, the new one with `share` of the traffic."""
        self.live, self.starting = old + new, []
        self.green = {i.plan.id for i in new}

        def shifted(record: EndpointRecord) -> None:
            record.pending_update = {**(record.pending_update or {}), "traffic": share}

        self._record(None, change=shifted)

    def _bake(self, seconds: float, deadline: float | None) -> bool:
        """Wait `seconds`, the instances looked after; False if `deadline` comes first (or
        the endpoint is deleted)."""
        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            if self.stop.wait(min(left, WATCH_SECONDS)):
                return False
            self._watch_live()
        return deadline is None or time.monotonic() < deadline

    def _resize(self, row: EndpointRecord) -> None:
        """UpdateEndpointWeightsAndCapacities: instances added (healthy before the new weights
        and counts take effect) or retired."""
        desired: dict[str, dict[str, Any]] = row.desired_variants or {}
        have: dict[str, list[Instance]] = {}
        for instance in self.live:
            have.setdefault(instance.plan.variant, []).append(instance)
        more = {
            v: d["count"] - len(have.get(v, []))
            for v, d in desired.items()
            if d["count"] is not None
        }
        try:
            fleet = self._fleet(row.config, row.models, {v: n for v, n in more.items() if n > 0})
            self._launch(fleet)
        except EndpointFailed as exc:
            self._abandon(str(exc), "UpdateEndpointWeightsAndCapacities")
            return
        if self.stop.is_set():
            return
        surplus = [i for v, n in more.items() if n < 0 for i in have.get(v, [])[n:]]
        self.live = [i for i in self.live if i not in surplus] + fleet
        self.starting = []

        def apply(record: EndpointRecord) -> None:
            record.config = updates.applied(record.config, desired)
            record.desired_variants = None
            record.failure_reason = None

        self._record(None, change=apply)
        self._retire(surplus)
        self._record(status.IN_SERVICE)

    def _scale_serverless(self, row: EndpointRecord) -> None:
        """Each serverless variant gets an instance for each invocation under way (a cold start
        each, up to its MaxConcurrency), keeps its ProvisionedConcurrency warm, and loses one
        idle instance at a time (serving/serverless.py)."""
        for variant in row.config["ProductionVariants"]:
            config = serverless.config_of(variant)
            if config is None:
                continue
            name = variant["VariantName"]
            self._serverless_started(name)
            mine = [i for i in self.live if i.plan.variant == name]
            demand = serverless.read_demand(serverless.demand_file(self.settings, self.name, name))
            # Invocations waiting for an instance say so again and again; a count not written
            # lately is of invocations that are served, or of a server that is gone.
            fresh = time.time() - demand.written < serverless.ASKING_SECONDS
            keep = max(serverless.warm_count(variant), demand.asking if fresh else 0)
            wanted = min(int(config["MaxConcurrency"]), keep)
            failed = self.cold_failed.get(name)
            if len(mine) < wanted and (failed is None or (fresh and _retry_due(*failed))):
                self._cold_start(row, name, wanted - len(mine))
            elif len(mine) > keep:
                self._scale_in_idle(mine, demand)

    def _cold_start(self, row: EndpointRecord, variant: str, count: int) -> None:
        """Start `count` instances of the variant, or as many as fit on the machine; when not
        one does, those waiting are told (serverless.refuse) and throttled by the proxy. They
        join `live` at once but the route only once each answers /ping (_serverless_started):
        meanwhile invocations arriving get cold starts of their own, not one batch after
        another."""
        began, asked = time.perf_counter(), count
        while True:
            try:
                fleet = self._fleet(row.config, row.models, {variant: count})
                self._start_fleet(fleet)
                break
            except EndpointFailed as exc:
                failed, self.starting = self.starting, []
                self._stop(failed)
                if isinstance(exc, NoCapacity) and count > 1:
                    count -= 1
                    continue
                # Not one fits: all those asked for are refused; else these `count` failed.
                self._cold_start_failed(
                    variant, exc, asked if isinstance(exc, NoCapacity) else count
                )
                return
        if self.stop.is_set():
            return
        for instance in fleet:
            self.started_at[instance.plan.id] = time.time()
            self.cold[instance.plan.id] = (time.monotonic() + instance.plan.startup_seconds, began)
        self.live, self.starting = self.live + fleet, []
        self._record(None)

    def _serverless_started(self, variant: str) -> None:
        """The variant's cold starts that answered /ping go in the route (the time each took
        is its ModelSetupTime); one whose container ended, or that did not answer in its
        startup time, is removed and the cold start failed."""
        for instance in [i for i in self.live if i.plan.id in self.cold]:
            if instance.plan.variant != variant:
                continue
            deadline, began = self.cold[instance.plan.id]
            reason = _ping_once(instance)
            if reason is None and not instance.ready and time.monotonic() >= deadline:
                reason = (
                    "its container did not answer GET /ping with 200 within "
                    f"{instance.plan.startup_seconds} seconds"
                )
            if instance.ready:
                del self.cold[instance.plan.id]
                self.cold_failed.pop(variant, None)
                self.metrics.setup(self.name, variant, time.perf_counter() - began)
                self.metrics.flush()
                self._record(None, change=_no_failure)
            elif reason is not None:
                del self.cold[instance.plan.id]
                self.live = [i for i in self.live if i is not instance]
                self.started_at.pop(instance.plan.id, None)
                self._record(None)
                self._stop([instance])
                failure = EndpointFailed(self._ping_failure(instance, reason))
                self._cold_start_failed(variant, failure)

    def _cold_start_failed(self, variant: str, exc: EndpointFailed, starts: int = 1) -> None:
        """Note `starts` cold starts that failed: as many invocations waiting are told at once
        (serving/proxy.py), not left to time out."""
        if isinstance(exc, NoCapacity):
            refused = serverless.refusal_file(self.settings, self.name, variant)
            serverless.note(refused, f"no serverless capacity to start: {exc}", starts)
        else:
            failure = serverless.failure_file(self.settings, self.name, variant)
            serverless.note(failure, str(exc), starts)
        _, failures = self.cold_failed.get(variant, (0.0, 0))
        self.cold_failed[variant] = (time.time(), failures + 1)
        message = f"A serverless instance of production variant {variant} failed: {exc}"

        def note(record: EndpointRecord) -> None:
            record.failure_reason = message

        self._record(None, change=note)

    def _scale_in_idle(self, mine: list[Instance], demand: serverless.Demand) -> None:
        """Stop the instance idle longest, once it has been for the idle period."""
        idle = self.settings.serverless_idle_seconds
        now = time.time()

        def last(instance: Instance) -> float:
            used = demand.used.get(instance.address, 0.0)
            return max(used, self.started_at.get(instance.plan.id, 0.0))

        spare = [
            i for i in mine if i.ready and i.address not in demand.busy and now - last(i) >= idle
        ]
        if not spare:
            return
        instance = min(spare, key=last)
        self.logs.note(
            instance.plan.stream,
            f"[openmaker] no invocation for {idle:g} seconds: the serverless instance "
            f"{instance.plan.id} stops",
        )
        self.live = [i for i in self.live if i is not instance]
        self._record(None)
        self._retire([instance])
        self.started_at.pop(instance.plan.id, None)

    def _abandon(self, reason: str, operation: str) -> None:
        """A new fleet that failed goes; the old one goes on serving, the reason kept."""
        fleet, self.starting = self.starting, []
        self._stop(fleet)
        message = f"{operation} failed, the endpoint serves as before: {reason}"

        def back(record: EndpointRecord) -> None:
            record.pending_update = record.desired_variants = None
            record.failure_reason = message

        self._record(status.IN_SERVICE, change=back)

    def _retire(self, instances: list[Instance]) -> None:
        """Stop instances already out of the route once no invocation can reach them."""
        if not instances:
            return
        self.stop.wait(ROUTE_CHANGE_SECONDS)  # the proxies' routes read before are gone
        deadline = time.monotonic() + self.settings.invocation_seconds
        while time.monotonic() < deadline and any(_in_use(i.address) for i in instances):
            self.stop.wait(PING_EVERY_SECONDS)
        if self.async_runner is not None:
            async_runner.drain(self.async_runner, instances, self.logs, self.stop)
        self._stop(instances)

    def _stop(self, instances: list[Instance]) -> None:
        if not instances:
            return
        grace = self.settings.stop_grace_seconds
        with ThreadPoolExecutor(len(instances)) as pool:
            list(pool.map(lambda i: i.stop(grace), instances))
        for instance in instances:
            instance.remove()
            self.indexes.discard(instance.plan.index)
        placement.release(self.writers, self.name, [i.plan.id for i in instances])
        _start_waiting_jobs(self.settings)  # their share of the machine is free now

    # -- the record -----------------------------------------------------------------------

    def _read(self) -> EndpointRecord | None:
        with self.writers() as session:
            return session.get(EndpointRecord, self.name)

    def _record(
        self,
        new_status: str | None,
        reason: str | None = None,
        change: Callable[[EndpointRecord], None] | None = None,
    ) -> None:
        with self.writers() as session:
            row = session.get(EndpointRecord, self.name)
            if row is None or row.status == status.DELETING:
                return
            if change is not None:
                change(row)
            if new_status == status.FAILED:
                fail(row, reason or "")
                row.instances = []
            else:
                if new_status is not None and row.status != new_status:
                    row.status, row.last_modified_time = new_status, now()
                row.instances = [_report(i, self.green) for i in self.live]
            session.commit()

    def _close(self) -> None:
        if self.health is not None:
            self.health.close()
        if self.usage is not None:
            self.usage.close()
            self.metrics.flush()  # the last samples
        if self.async_runner is not None:
            self.async_runner.close()
        self._stop(self.live + self.starting)
        if self.settings.executor == "ray":
            gate_keys.revoke_job(self.settings.home, ray_instances.gate_job(network_key(self.name)))
        unmount_under(self.settings.home / "endpoints" / self.name)
        remove_network(self.settings.home, network_key(self.name))
        self.logs.close()
        with self.writers() as session:
            row = session.get(EndpointRecord, self.name)
            if row is None:
                return
            if row.status == status.DELETING:
                async_queue.remove(async_queue.folder(self.settings, self.name))
                session.delete(row)
                session.query(Tag).filter(Tag.resource_arn == row.arn).delete()
            else:
                row.instances, row.placement = [], None
            row.worker = None
            session.commit()
        _start_waiting_jobs(self.settings)


def _retry_due(failed_at: float, failures: int) -> bool:
    """Whether a serverless cold start that failed `failures` times in a row, last at
    `failed_at`, may be tried again (serving/serverless.py)."""
    return time.time() >= failed_at + serverless.retry_delay(failures)


def _timed_out(plan: Deployment) -> str:
    return (
        "the deployment went past its MaximumExecutionTimeoutInSeconds "
        f"({plan.timeout_seconds:g} s); the traffic went back to the old fleet"
    )


def _no_shift(record: EndpointRecord) -> None:
    record.pending_update = {**(record.pending_update or {}), "traffic": 0.0}


def _no_failure(record: EndpointRecord) -> None:
    record.failure_reason = None


def _report(instance: Instance, green: set[str]) -> dict[str, Any]:
    container = instance.container
    alive = container is not None and container.poll() is None
    return {
        "variant": instance.plan.variant,
        "id": instance.plan.id,
        "address": instance.address,
        "healthy": alive and instance.ready,
        "green": instance.plan.id in green,
        **instance.held_by(),
    }


def _ping_once(instance: Instance) -> str | None:
    """Why the instance will never answer /ping (its container ended); None otherwise, with
    `instance.ready` set once it answered."""
    container = instance.container
    code = container.poll() if container is not None else -1
    if code is not None:
        return instance.exit_reason(code)
    if instance.healthy():
        instance.ready = True
    return None


def _in_use(address: str) -> bool:
    """Whether a connection to `address` (host:port, on the endpoint's bridge) is open: an
    invocation under way."""
    host, _, port = address.rpartition(":")
    if not host:
        return False
    wanted = f"{int.from_bytes(socket.inet_aton(host), 'little'):08X}:{int(port):04X}"
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    # Fields: sl, local address, remote address, state (01: established).
    return any(f[2] == wanted and f[3] == "01" for f in (line.split() for line in lines))


def _start_waiting_jobs(settings: Settings) -> None:
    try:
        from openmaker.jobs.executor import executor_for
        from openmaker.jobs.queue import start_ready
        from openmaker.resources import KINDS

        start_ready(settings, executor_for(settings), KINDS, new=False)
    except Exception:  # never a reason for the endpoint to fail; the next sweep retries
        traceback.print_exc()
