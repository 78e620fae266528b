"""Endpoint configurations: CreateEndpointConfig, Describe, List, Delete.

Each production variant names a model that exists, an instance type (against the capacity
catalog, openmaker/jobs/capacity.py) and a count, or a ServerlessConfig (serving/serverless.py).
What openmaker cannot serve yet (explainers) is refused here; AsyncInferenceConfig,
DataCaptureConfig and ShadowProductionVariants are checked by serving/async_config.py,
serving/capture.py and serving/shadow.py. A shadow variant is checked as a production variant
is (model, instances, a name unique among both lists).
"""

from __future__ import annotations

import copy
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from openmaker.jobs import capacity
from openmaker.jobs.db import EndpointConfigRecord, ModelRecord, Tag
from openmaker.jobs.resource import Instances
from openmaker.jobs.service import add_tagged
from openmaker.serving import async_config, capture, serverless, shadow
from openmaker.serving.clock import as_utc, now
from openmaker.serving.listing import page
from openmaker.settings import Settings
from openmaker.shapes.arn import resource_arn
from openmaker.shapes.errors import ValidationException

INSTANCE_MEMBERS = ("ModelName", "InstanceType", "InitialInstanceCount")
NOT_YET = ("ExplainerConfig",)


class EndpointConfigs:
    def __init__(
        self, settings: Settings, sessions: sessionmaker[Session], writers: sessionmaker[Session]
    ) -> None:
        self.settings, self.sessions, self.writers = settings, sessions, writers

    def arn(self, name: str) -> str:
        return resource_arn("endpoint-config", name, self.settings.region, self.settings.account_id)

    def create(self, request: dict[str, Any]) -> dict[str, str]:
        self._check(request)
        name = request["EndpointConfigName"]
        arn = self.arn(name)
        kept = {k: copy.deepcopy(v) for k, v in request.items() if k != "Tags"}
        with self.writers() as session:
            models: dict[str, dict[str, Any]] = {}
            for member, variant in shadow.members(request):
                model = session.get(ModelRecord, variant["ModelName"])
                if model is None:
                    model_arn = resource_arn(
                        "model",
                        variant["ModelName"],
                        self.settings.region,
                        self.settings.account_id,
                    )
                    raise ValidationException(
                        f'{member}.ModelName: Could not find model "{model_arn}".'
                    )
                models[variant["ModelName"]] = model.request
            shadow.check_models(request, models)
            add_tagged(
                session,
                EndpointConfigRecord(name=name, arn=arn, request=kept, creation_time=now()),
                arn,
                request.get("Tags") or [],
                "endpoint configuration",
            )
        return {"EndpointConfigArn": arn}

    def get(self, name: str) -> EndpointConfigRecord:
        with self.sessions() as session:
            config = session.get(EndpointConfigRecord, name)
        if config is None:
            raise ValidationException(f'Could not find endpoint configuration "{self.arn(name)}".')
        return config

    def describe(self, name: str) -> dict[str, Any]:
        config = self.get(name)
        return {
            **config.request,
            "EndpointConfigArn": config.arn,
            "CreationTime": as_utc(config.creation_time),
        }

    def list(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.sessions() as session:
            rows = list(session.scalars(select(EndpointConfigRecord)))
        return page("ListEndpointConfigs", params, rows, _summary, "EndpointConfigs")

    def delete(self, name: str) -> None:
        with self.writers() as session:
            config = session.get(EndpointConfigRecord, name)
            if config is None:
                raise ValidationException(
                    f'Could not find endpoint configuration "{self.arn(name)}".'
                )
            session.delete(config)
            session.query(Tag).filter(Tag.resource_arn == config.arn).delete()
            session.commit()

    def _check(self, request: dict[str, Any]) -> None:
        for member in NOT_YET:
            if request.get(member) is not None:
                raise ValidationException(f"{member}: openmaker does not serve this yet")
        async_config.check(request.get("AsyncInferenceConfig"))
        capture.check(request.get("DataCaptureConfig"))
        shadow.check(request)
        names: set[str] = set()
        machine = capacity.machine(self.settings)
        for member, variant in shadow.members(request):
            if variant["VariantName"] in names:
                raise ValidationException(
                    f"{member}.VariantName: the variant name {variant['VariantName']!r} is "
                    "used twice; each variant needs a name of its own"
                )
            names.add(variant["VariantName"])
            serverless_variant = serverless.config_of(variant) is not None
            if serverless_variant:
                serverless.check(member, variant)
            required = ("ModelName",) if serverless_variant else INSTANCE_MEMBERS
            for wanted in required:
                if variant.get(wanted) is None:
                    raise ValidationException(
                        f"Value null at '{member}.{wanted}' failed to satisfy constraint: "
                        "Member must not be null"
                    )
            instance_type = variant.get("InstanceType", serverless.PLACEMENT_TYPE)
            count = int(variant.get("InitialInstanceCount", 1))
            capacity.check_can_fit(
                Instances(instance_type, count, member),
                machine,
                "endpoint",
                serverless.memory_bytes(variant),  # a serverless one's is its MemorySizeInMB
            )
        serverless.check_config(request)


def _summary(config: EndpointConfigRecord) -> dict[str, Any]:
    return {
        "EndpointConfigName": config.name,
        "EndpointConfigArn": config.arn,
        "CreationTime": as_utc(config.creation_time),
    }
