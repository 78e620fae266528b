"""Endpoints: CreateEndpoint, DescribeEndpoint, ListEndpoints, DeleteEndpoint, and where the
invocation proxy finds an endpoint's instances.

Creating one records it (`Creating`) with its configuration and models as they are now, then
starts its worker (serving/worker.py), which starts the instances and reports `InService`, or
`Failed` with the reason. Deleting one asks its worker to stop them (`Deleting`); the worker
removes the record once they are gone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from openmaker.jobs.db import EndpointRecord, Tag
from openmaker.jobs.executor import WorkerRef, executor_for
from openmaker.jobs.tags import put as put_tags
from openmaker.runtime.network import remove as remove_network
from openmaker.serving import status
from openmaker.serving.clock import as_utc, now
from openmaker.serving.configs import EndpointConfigs
from openmaker.serving.kind import ENDPOINT, fail, network_key
from openmaker.serving.launcher import Launcher
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


@dataclass(frozen=True)
class Route:
    """Where an endpoint's invocations go."""

    status: str
    variants: tuple[Variant, ...]


class Endpoints:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        writers: sessionmaker[Session],
        models: Models,
        configs: EndpointConfigs,
    ) -> None:
        self.settings, self.sessions, self.writers = settings, sessions, writers
        self.models, self.configs = models, configs
        self.launcher = Launcher()
        # What its workers' references mean: whether one is gone, how to stop it.
        self.workers = executor_for(settings)

    def arn(self, name: str) -> str:
        return resource_arn("endpoint", name, self.settings.region, self.settings.account_id)

    def create(self, request: dict[str, Any]) -> dict[str, str]:
        name = request["EndpointName"]
        config = self.configs.get(request["EndpointConfigName"])
        models = {
            v["ModelName"]: self.models.get(v["ModelName"]).request
            for v in config.request["ProductionVariants"]
        }
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
            session.add(record)
            try:
                session.flush()
                put_tags(session, arn, request.get("Tags") or [])
                session.commit()
            except IntegrityError:
                raise ValidationException(
                    f'Cannot create already existing endpoint "{arn}".'
                ) from None
        try:
            self.launcher.start(name, self.settings, lambda worker: self._owned_by(name, worker))
        except Exception as exc:  # the endpoint must not stay Creating with nothing behind it
            with self.writers() as session:
                row = session.get(EndpointRecord, name)
                if row is not None:
                    fail(row, f"InternalServerError: cannot start the endpoint's worker: {exc}")
                    session.commit()
        return {"EndpointArn": arn}

    def _owned_by(self, name: str, worker: WorkerRef) -> None:
        with self.writers() as session:
            row = session.get(EndpointRecord, name)
            if row is not None:
                row.worker = worker
                session.commit()

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
                _variant_summary(row, v) for v in row.config["ProductionVariants"]
            ],
        }
        if row.failure_reason:
            result["FailureReason"] = row.failure_reason
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
            self.workers.stop(worker)

    def route(self, name: str) -> Route | None:
        """Where invocations of `name` go (None: no such endpoint)."""
        with self.sessions() as session:
            row = session.get(EndpointRecord, name)
        if row is None:
            return None
        variants = []
        for variant in row.config["ProductionVariants"]:
            mine = [
                i for i in row.instances if i["variant"] == variant["VariantName"] and i["healthy"]
            ]
            variants.append(
                Variant(
                    variant["VariantName"],
                    float(variant.get("InitialVariantWeight", 1.0)),
                    tuple(i["address"] for i in mine),
                    tuple(f"{variant['VariantName']}/{i['id']}" for i in mine),
                )
            )
        return Route(row.status, tuple(variants))

    def _checked(self, name: str) -> EndpointRecord:
        """The endpoint's record; one whose worker vanished has failed, saying so."""
        self.launcher.reap()
        with self.sessions() as session:
            row = session.get(EndpointRecord, name)
        if row is None:
            raise self._not_found(name)
        lost = row.worker is not None and self.workers.lost(row.worker)
        if row.status in status.ACTIVE and lost:
            with self.writers() as session:
                row = session.get(EndpointRecord, name)
                if row is None:  # its worker removed it as it ended
                    raise self._not_found(name)
                if row.status in status.ACTIVE and row.worker is not None:
                    ENDPOINT.lifecycle.lost(
                        row,
                        f"the openmaker worker running the endpoint "
                        f"({self.workers.describe(row.worker)}) ended without stopping it",
                    )
                    session.commit()
            remove_network(self.settings.home, network_key(name))
        return row

    def _remove(self, session: Session, row: EndpointRecord) -> None:
        session.delete(row)
        session.query(Tag).filter(Tag.resource_arn == row.arn).delete()

    def _not_found(self, name: str) -> ValidationException:
        return ValidationException(f'Could not find endpoint "{self.arn(name)}".')


def _variant_summary(row: EndpointRecord, variant: dict[str, Any]) -> dict[str, Any]:
    name = variant["VariantName"]
    model = row.models.get(variant["ModelName"], {})
    container = model.get("PrimaryContainer") or (model.get("Containers") or [{}])[0]
    healthy = sum(1 for i in row.instances if i["variant"] == name and i["healthy"])
    weight = float(variant.get("InitialVariantWeight", 1.0))
    summary: dict[str, Any] = {
        "VariantName": name,
        "CurrentWeight": weight,
        "DesiredWeight": weight,
        "CurrentInstanceCount": healthy,
        "DesiredInstanceCount": int(variant["InitialInstanceCount"]),
    }
    if container.get("Image"):
        summary["DeployedImages"] = [
            {"SpecifiedImage": container["Image"], "ResolvedImage": container["Image"]}
        ]
    return summary


def _summary(row: EndpointRecord) -> dict[str, Any]:
    return {
        "EndpointName": row.name,
        "EndpointArn": row.arn,
        "CreationTime": as_utc(row.creation_time),
        "LastModifiedTime": as_utc(row.last_modified_time),
        "EndpointStatus": row.status,
    }
