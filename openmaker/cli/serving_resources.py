"""`openmaker models list / describe / delete` and `openmaker endpoint-configs list / describe /
delete`: the same three commands for each kind, through the server or on this machine
(sagemaker_calls.py), in the look of `openmaker endpoints`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Column, Table

from openmaker.cli.output import console, fail, when
from openmaker.cli.sagemaker_calls import CallFailed, SageMakerCalls
from openmaker.settings import SettingsError, load_settings


@dataclass(frozen=True)
class Kind:
    noun: str  # "model"
    operation: str  # "Model": ListModels, DescribeModel, DeleteModel
    plural: str  # "Models": the List operation's name and member
    name_member: str  # "ModelName"


MODEL = Kind("model", "Model", "Models", "ModelName")
ENDPOINT_CONFIG = Kind("endpoint configuration", "EndpointConfig", "EndpointConfigs",
                       "EndpointConfigName")  # fmt: skip


def _calls() -> SageMakerCalls:
    try:
        return SageMakerCalls(load_settings())
    except SettingsError as exc:
        raise fail(str(exc)) from None


def _model_rows(found: dict[str, Any]) -> list[tuple[str, str]]:
    containers = [found["PrimaryContainer"]] if "PrimaryContainer" in found else []
    rows = []
    for index, container in enumerate(containers + found.get("Containers", [])):
        label = "Container" if len(containers) == 1 else f"Container {index + 1}"
        rows.append((f"{label} image", container.get("Image", "")))
        data = container.get("ModelDataUrl") or (
            container.get("ModelDataSource", {}).get("S3DataSource", {}).get("S3Uri", "")
        )
        rows.append((f"{label} data", data))
        for key, value in sorted((container.get("Environment") or {}).items()):
            rows.append((f"{label} env", f"{key}={value}"))
    rows.append(("Role", found.get("ExecutionRoleArn", "")))
    return rows


def _config_rows(found: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for variant in found.get("ProductionVariants", []):
        shape = f"{variant.get('InitialInstanceCount', 0)} × {variant.get('InstanceType', '')}"
        weight = variant.get("InitialVariantWeight", 1.0)
        rows.append(
            (f"Variant {variant['VariantName']}", f"{variant['ModelName']}, {shape}, "
             f"weight {weight:g}")
        )  # fmt: skip
    if "AsyncInferenceConfig" in found:
        output = found["AsyncInferenceConfig"].get("OutputConfig", {})
        rows.append(("Async output", output.get("S3OutputPath", "")))
    if "DataCaptureConfig" in found:
        rows.append(("Data capture", found["DataCaptureConfig"].get("DestinationS3Uri", "")))
    return rows


def resource_app(kind: Kind) -> typer.Typer:
    app = typer.Typer(no_args_is_help=True, help=f"Look at and delete {kind.noun}s.")

    @app.command("list", help=f"List {kind.noun}s, newest first.")
    def list_resources() -> None:
        try:
            found = _calls().pages(f"List{kind.plural}", kind.plural)
        except CallFailed as exc:
            raise fail(str(exc)) from None
        longest = max((len(item[kind.name_member]) for item in found), default=4)
        table = Table(Column("Name", no_wrap=True, min_width=longest), Column("Created"))
        for item in found:
            table.add_row(item[kind.name_member], when(item["CreationTime"]))
        console.print(table)

    @app.command("describe", help=f"Show one {kind.noun}.")
    def describe_resource(
        name: str,
        as_json: Annotated[bool, typer.Option("--json", help="The Describe call's shape.")] = False,
    ) -> None:
        try:
            found = _calls().call(f"Describe{kind.operation}", **{kind.name_member: name})
        except CallFailed as exc:
            raise fail(str(exc)) from None
        if as_json:
            print(json.dumps(found, indent=2, default=lambda v: v.isoformat()))
            return
        table = Table(Column(no_wrap=True), Column(overflow="fold"), show_header=False, box=None)
        table.add_row("Name", found[kind.name_member])
        rows = _model_rows(found) if kind == MODEL else _config_rows(found)
        for label, value in rows:
            table.add_row(label, escape(value))
        table.add_row("Created", when(found["CreationTime"]))
        console.print(table)

    @app.command("delete", help=f"Delete a {kind.noun} (endpoints made from it go on serving).")
    def delete_resource(name: str) -> None:
        try:
            _calls().call(f"Delete{kind.operation}", **{kind.name_member: name})
        except CallFailed as exc:
            raise fail(str(exc)) from None
        console.print(f"Deleted {name}")

    return app


models_app = resource_app(MODEL)
endpoint_configs_app = resource_app(ENDPOINT_CONFIG)
