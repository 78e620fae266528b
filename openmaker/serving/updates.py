"""UpdateEndpoint and UpdateEndpointWeightsAndCapacities as asked: checked, then written on the
endpoint's record for its worker (serving/worker.py), which carries them out and returns the
endpoint to `InService`.

- UpdateEndpoint: the new configuration and its models as they are now, in `pending_update`.
  `RetainAllVariantProperties` keeps the weights and counts of the variants the new
  configuration shares with the old, but those named in `ExcludeRetainedVariantProperties`.
  The deployment is blue/green, its `DeploymentConfig` as serving/deployment.py reads it.
- UpdateEndpointWeightsAndCapacities: each named variant's desired weight and count, in
  `desired_variants`; weights and counts take effect together once the added instances are
  healthy.
Either is refused unless the endpoint is `InService`, as SageMaker refuses an update of an
endpoint being created, updated or deleted.
"""

from __future__ import annotations

import copy
from typing import Any

from openmaker.jobs import capacity
from openmaker.jobs.db import EndpointRecord
from openmaker.jobs.resource import Instances
from openmaker.serving import deployment, serverless, shadow, status
from openmaker.settings import Settings
from openmaker.shapes.errors import ValidationException

WEIGHT = "InitialVariantWeight"
COUNT = "InitialInstanceCount"


def check_updatable(row: EndpointRecord) -> None:
    if row.status != status.IN_SERVICE:
        state = "failed" if row.status == status.FAILED else "in-progress"
        raise ValidationException(
            f'Cannot update {state} endpoint "{row.arn}" (it is {row.status}; an endpoint is '
            "updated only while InService)."
        )


def pending_update(
    row: EndpointRecord,
    request: dict[str, Any],
    config: dict[str, Any],
    models: dict[str, Any],
) -> dict[str, Any]:
    """What the worker is asked to deploy for UpdateEndpoint `request`."""
    config = copy.deepcopy(config)
    if request.get("RetainAllVariantProperties"):
        excluded = {
            e["VariantPropertyType"] for e in request.get("ExcludeRetainedVariantProperties") or []
        }
        old = {v["VariantName"]: v for v in row.config["ProductionVariants"]}
        for variant in config["ProductionVariants"]:
            kept = old.get(variant["VariantName"])
            if kept is None:
                continue
            if "DesiredWeight" not in excluded:
                variant[WEIGHT] = kept.get(WEIGHT, 1.0)
            if "DesiredInstanceCount" not in excluded and COUNT in kept and COUNT in variant:
                variant[COUNT] = kept[COUNT]
    steps = deployment.parse(request, row.config, config)
    return {
        "EndpointConfigName": request["EndpointConfigName"],
        "config": config,
        "models": models,
        "deployment": steps.to_json(),
    }


def desired_variants(
    settings: Settings, row: EndpointRecord, request: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """What UpdateEndpointWeightsAndCapacities `request` asks of each variant it names."""
    variants = {v["VariantName"]: v for v in row.config["ProductionVariants"]}
    desired: dict[str, dict[str, Any]] = {}
    machine = capacity.machine(settings)
    for index, asked in enumerate(request["DesiredWeightsAndCapacities"], start=1):
        member = f"DesiredWeightsAndCapacities.{index}"
        name = asked["VariantName"]
        variant = variants.get(name)
        if variant is None:
            raise ValidationException(
                f"{member}.VariantName: the variant {name} is not a production variant of "
                f'endpoint "{row.arn}".'
            )
        if name in desired:
            raise ValidationException(f"{member}.VariantName: the variant {name} is named twice")
        weight = float(asked.get("DesiredWeight", variant.get(WEIGHT, 1.0)))
        if serverless.config_of(variant) is not None:
            if asked.get("DesiredInstanceCount") is not None:
                raise ValidationException(
                    f"{member}.DesiredInstanceCount: the variant {name} is serverless; its "
                    "instances come and go with its invocations"
                )
            changed = serverless.updated(member, variant, asked.get("ServerlessUpdateConfig"))
            desired[name] = {"weight": weight, "count": None, "serverless": changed}
            continue
        if asked.get("ServerlessUpdateConfig") is not None:
            raise ValidationException(
                f"{member}.ServerlessUpdateConfig: the variant {name} is not serverless"
            )
        count = int(asked.get("DesiredInstanceCount", variant[COUNT]))
        # An asynchronous endpoint may go down to none: its requests wait in its queue.
        least = 0 if row.config.get("AsyncInferenceConfig") is not None else 1
        if count < least:
            raise ValidationException(
                f"{member}.DesiredInstanceCount: a variant keeps at least 1 instance (only an "
                "asynchronous endpoint's variants scale to 0)"
            )
        instances = Instances(variant["InstanceType"], count, member)
        capacity.check_can_fit(instances, machine, "endpoint")
        desired[name] = {"weight": weight, "count": count}
    return desired


def counts(config: dict[str, Any]) -> dict[str, int]:
    """How many instances each variant starts with (a serverless one: those kept warm; a
    shadow one too)."""
    return {v["VariantName"]: initial_count(v) for v in shadow.every_variant(config)}


def initial_count(variant: dict[str, Any]) -> int:
    if serverless.config_of(variant) is not None:
        return serverless.warm_count(variant)
    return int(variant[COUNT])


def applied(config: dict[str, Any], desired: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`config` with the desired weights and counts."""
    config = copy.deepcopy(config)
    for variant in config["ProductionVariants"]:
        wanted = desired.get(variant["VariantName"])
        if wanted is not None:
            variant[WEIGHT] = wanted["weight"]
            if wanted["count"] is not None:
                variant[COUNT] = wanted["count"]
            if wanted.get("serverless") is not None:
                variant[serverless.CONFIG] = wanted["serverless"]
    return config
