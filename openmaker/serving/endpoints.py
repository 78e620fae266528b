"""Endpoints: CreateEndpoint, DescribeEndpoint, ListEndpoints, DeleteEndpoint, and where the
invocation proxy finds an endpoint's instances.

Creating one records it (`Creating`) with its configuration and models as they are now; the
queue then starts its worker through the executor (serving/kind.py), which starts the instances
and reports `InService`, or `Failed` with the reason. An update is written on the record for
the worker to carry out (serving/updates.py). Deleting one asks its worker to stop them
(`Deleting`); the worker removes the record once they are gone.
"""

from __future__ import annotations

import builtins
import threading
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from openmaker.jobs import queue
from openmaker.jobs.db import EndpointRecord, Tag
from openmaker.jobs.executor import Executor, executor_for
from openmaker.jobs.service import add_tagged
from openmaker.runtime.network import remove as remove_network
from openmaker.serving import pipeline, serverless, shadow, status, updates
from openmaker.serving.clock import as_utc, now
from openmaker.serving.configs import EndpointConfigs
from openmaker.serving.kind import ENDPOINT, fail, network_key
from openmaker.serving.listing import page
from openmaker.serving.models import Models
from openmaker.settings import Settings
from openmaker.shapes.arn import resource_arn
from openmaker.shapes.errors import ValidationException


@dataclass(frozen=True)
class Variant:
    name: str
    weight: float
    addresses: tuple[str, ...]  # host:port of its healthy instances
    streams: tuple[str, ...]  # their log streams, by instance
    model: dict[str, Any] = field(default_factory=dict)  # its model's CreateModel request
    serverless: dict[str, Any] | None = None  # its ServerlessConfig (serving/serverless.py)
    # Who holds each instance on another node (Instance.held_by; empty: on this machine).
    held_by: tuple[dict[str, str], ...] = ()


@dataclass(frozen=True)
class Route:
    """Where an endpoint's invocations go."""

    status: str
    variants: tuple[Variant, ...]
    # Its shadow variant (serving/shadow.py), `weight` the fraction of invocations copied.
    shadows: tuple[Variant, ...] = ()


class Endpoints:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        writers: sessionmaker[Session],
        models: Models,
        configs: EndpointConfigs,
        executor: Executor | None = None,
    ) -> None:
        self.settings, self.sessions, self.writers = settings, sessions, writers
        self.models, self.configs = models, configs
        self.executor = executor or executor_for(settings)
        # The executor keeps a warm worker: one start at a time through it.
        self._starting = threading.Lock()

    def arn(self, name: str) -> str:
        return resource_arn("endpoint", name, self.settings.region, self.settings.account_id)

    def create(self, request: dict[str, Any]) -> dict[str, str]:
        name = request["EndpointName"]
        config = self.configs.get(request["EndpointConfigName"])
        models = self._models_of(config.request)
        arn = self.arn(name)
        at = now()
        record = EndpointRecord(
            name=name,
            arn=arn,
            request={k: v for k, v in request.items() if k != "Tags"},
            status=status.CREATING,
            secondary_status="",
            transitions=[],
            creation_time=at,
            last_modified_time=at,
            config=config.request,
            models=models,
            instances=[],
        )
        with self.writers() as session:
            add_tagged(session, record, arn, request.get("Tags") or [], "endpoint")
        try:
            self._start_waiting()
        except Exception as exc:  # the endpoint must not stay Creating with nothing behind it
            with self.writers() as session:
                row = session.get(EndpointRecord, name)
                if row is not None and ENDPOINT.lifecycle.needs_worker(row):
                    fail(row, f"InternalServerError: cannot start the endpoint's worker: {exc}")
                    session.commit()
        return {"EndpointArn": arn}

    def _models_of(self, config: dict[str, Any]) -> dict[str, Any]:
        return {
            v["ModelName"]: self.models.get(v["ModelName"]).request
            for v in shadow.every_variant(config)
        }

    def _start_waiting(self) -> None:
        """Start the workers of the endpoints (and jobs) that wait for one (the queue fails
        any it cannot start, saying why)."""
        from openmaker.resources import KINDS  # the kinds list imports this package's kind

        with self._starting:
            queue.start_ready(self.settings, self.executor, KINDS)

    def update(self, request: dict[str, Any]) -> dict[str, str]:
        """UpdateEndpoint (serving/updates.py)."""
        name = request["EndpointName"]
        config = self.configs.get(request["EndpointConfigName"])
        models = self._models_of(config.request)
        shadow.check_update(self._checked(name).config, config.request, request)
        with self.writers() as session:
            row = session.get(EndpointRecord, name)
            if row is None:
                raise self._not_found(name)
            updates.check_updatable(row)
            row.pending_update = updates.pending_update(row, request, config.request, models)
            row.status, row.last_modified_time = status.UPDATING, now()
            session.commit()
        return {"EndpointArn": self.arn(name)}

    def update_weights_and_capacities(self, request: dict[str, Any]) -> dict[str, str]:
        name = request["EndpointName"]
        self._checked(name)
        with self.writers() as session:
            row = session.get(EndpointRecord, name)
            if row is None:
                raise self._not_found(name)
            updates.check_updatable(row)
            row.desired_variants = updates.desired_variants(self.settings, row, request)
            row.status, row.last_modified_time = status.UPDATING, now()
            session.commit()
        return {"EndpointArn": self.arn(name)}

    def describe(self, name: str) -> dict[str, Any]:
        row = self._checked(name)
        result: dict[str, Any] = {
            "EndpointName": row.name,
            "EndpointArn": row.arn,
            "EndpointConfigName": row.request["EndpointConfigName"],
            "EndpointStatus": row.status,
            "CreationTime": as_utc(row.creation_time),
            "LastModifiedTime": as_utc(row.last_modified_time),
            "ProductionVariants": [
                _variant_summary(row, v, row.models) for v in row.config["ProductionVariants"]
            ],
        }
        if shadow.of(row.config):
            result[shadow.FIELD] = [
                _variant_summary(row, v, row.models) for v in shadow.of(row.config)
            ]
        if row.failure_reason:
            result["FailureReason"] = row.failure_reason
        if row.pending_update is not None:
            pending = row.pending_update
            result["PendingDeploymentSummary"] = {
                "EndpointConfigName": pending["EndpointConfigName"],
                "ProductionVariants": [
                    _variant_summary(row, v, pending["models"], pending=True)
                    for v in pending["config"]["ProductionVariants"]
                ],
                "StartTime": as_utc(row.last_modified_time),
            }
            if shadow.of(pending["config"]):
                result["PendingDeploymentSummary"][shadow.FIELD] = [
                    _variant_summary(row, v, pending["models"], pending=True)
                    for v in shadow.of(pending["config"])
                ]
        return result

    def list(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.sessions() as session:
            rows = list(session.scalars(select(EndpointRecord)))
        return page("ListEndpoints", params, rows, _summary, "Endpoints")

    def delete(self, name: str) -> None:
        self._checked(name)
        with self.writers() as session:
            row = session.get(EndpointRecord, name)
            if row is None:
                raise self._not_found(name)
            if row.status in status.ENDED or row.worker is None:
                # Nothing runs its instances: it goes now.
                self._remove(session, row)
                session.commit()
                remove_network(self.settings.home, network_key(name))
                return
            if row.status != status.DELETING:
                row.status, row.last_modified_time = status.DELETING, now()
            row.stop_requested = status.DELETING
            worker = row.worker if row.worker_ready else None
            session.commit()
        if worker is not None:  # a worker not yet ready reads `stop_requested` when it is
            self.executor.stop(worker)

    def instances(self, name: str) -> builtins.list[dict[str, Any]]:
        """The endpoint's instances as its worker last reported them: variant, id, healthy."""
        row = self._checked(name)
        return [
            {"variant": i["variant"], "id": i["id"], "healthy": bool(i["healthy"])}
            for i in row.instances
        ]

    def route(self, name: str) -> Route | None:
        """Where invocations of `name` go (None: no such endpoint)."""
        with self.sessions() as session:
            row = session.get(EndpointRecord, name)
        if row is None:
            return None
        pending = row.pending_update or {}
        share = float(pending.get("traffic", 0.0))  # the new fleet's, in a canary or linear update
        variants = _variants(row.config, row.models, row.instances, False, 1.0 - share)
        if share > 0:
            new = _variants(pending["config"], pending["models"], row.instances, True, share)
            variants += new
        if not shadow.of(row.config):
            return Route(row.status, tuple(variants))
        shadows = _variants(row.config, row.models, row.instances, False, 1.0, shadow.FIELD)
        fraction = shadow.sampled(row.config)
        copied = tuple(replace(s, weight=fraction) for s in shadows)
        return Route(row.status, tuple(variants), copied)

    def _checked(self, name: str) -> EndpointRecord:
        """The endpoint's record; one whose worker vanished has failed, saying so."""
        self.executor.reap()
        with self.sessions() as session:
            row = session.get(EndpointRecord, name)
        if row is None:
            raise self._not_found(name)
        lost = row.worker is not None and self.executor.lost(row.worker)
        if row.status in status.ACTIVE and lost:
            with self.writers() as session:
                row = session.get(EndpointRecord, name)
                if row is None:  # its worker removed it as it ended
                    raise self._not_found(name)
                if row.status in status.ACTIVE and row.worker is not None:
                    ENDPOINT.lifecycle.lost(
                        row,
                        f"the openmaker worker running the endpoint "
                        f"({self.executor.describe(row.worker)}) ended without stopping it",
                    )
                    session.commit()
            remove_network(self.settings.home, network_key(name))
        return row

    def _remove(self, session: Session, row: EndpointRecord) -> None:
        session.delete(row)
        session.query(Tag).filter(Tag.resource_arn == row.arn).delete()

    def _not_found(self, name: str) -> ValidationException:
        return ValidationException(f'Could not find endpoint "{self.arn(name)}".')


def _variants(
    config: dict[str, Any],
    models: dict[str, Any],
    instances: builtins.list[dict[str, Any]],
    green: bool,
    share: float,
    member: str = "ProductionVariants",
) -> builtins.list[Variant]:
    """`config`'s variants (`member`: its shadow ones), with the healthy instances of the fleet
    (`green`: the new one of an update under way) and `share` of their weights."""
    found = []
    for variant in config.get(member) or []:
        name = variant["VariantName"]
        mine = [
            i
            for i in instances
            if i["variant"] == name and i["healthy"] and bool(i.get("green")) == green
        ]
        found.append(
            Variant(
                name,
                float(variant.get("InitialVariantWeight", 1.0)) * share,
                tuple(i["address"] for i in mine),
                tuple(f"{name}/{i['id']}" for i in mine),
                models.get(variant["ModelName"], {}),
                serverless.config_of(variant),
                tuple({k: i[k] for k in ("agent", "key") if k in i} for i in mine),
            )
        )
    return found


def _variant_summary(
    row: EndpointRecord, variant: dict[str, Any], models: dict[str, Any], pending: bool = False
) -> dict[str, Any]:
    """A variant as DescribeEndpoint shows it: its weight and count now (the healthy instances
    in the route), and those an update under way asks for."""
    name = variant["VariantName"]
    model = models.get(variant["ModelName"], {})
    healthy = sum(
        1 for i in row.instances if i["variant"] == name and i["healthy"] and not i.get("green")
    )
    weight = float(variant.get("InitialVariantWeight", 1.0))
    desired = (row.desired_variants or {}).get(name)
    summary: dict[str, Any] = {
        "VariantName": name,
        "CurrentWeight": weight,
        "DesiredWeight": weight if desired is None else desired["weight"],
    }
    config = serverless.config_of(variant)
    if config is not None:  # no instance counts: its instances follow its invocations
        changed = None if desired is None else desired.get("serverless")
        summary["DesiredServerlessConfig"] = changed or config
        if not pending:
            summary["CurrentServerlessConfig"] = config
    else:
        count = int(variant["InitialInstanceCount"])
        summary["CurrentInstanceCount"] = 0 if pending else healthy
        summary["DesiredInstanceCount"] = count if desired is None else desired["count"]
    if pending:  # the shape of a pending variant has no current figures
        summary.pop("CurrentWeight")
        summary.pop("CurrentInstanceCount", None)
        if config is None:
            summary["DesiredInstanceCount"] = int(variant["InitialInstanceCount"])
            summary["InstanceType"] = variant["InstanceType"]
    images = [c["Image"] for c in pipeline.containers(model) if c.get("Image")]
    if images:  # one per container (an inference pipeline's each)
        summary["DeployedImages"] = [{"SpecifiedImage": i, "ResolvedImage": i} for i in images]
    return summary


def _summary(row: EndpointRecord) -> dict[str, Any]:
    return {
        "EndpointName": row.name,
        "EndpointArn": row.arn,
        "CreationTime": as_utc(row.creation_time),
        "LastModifiedTime": as_utc(row.last_modified_time),
        "EndpointStatus": row.status,
    }
