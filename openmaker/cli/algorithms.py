"""`openmaker algorithms list / describe` and `openmaker model-packages list / describe`:
through the server when AWS_ENDPOINT_URL_SAGEMAKER names one (boto3's sagemaker client), else on
this machine's own database."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

from openmaker.connection import server_configured
from openmaker.settings import SettingsError, load_settings
from openmaker.shapes.errors import ServiceError

algorithms_app = typer.Typer(no_args_is_help=True, help="Look at algorithms.")
model_packages_app = typer.Typer(no_args_is_help=True, help="Look at model packages.")
console = Console(highlight=False, soft_wrap=True)
errors = Console(stderr=True, highlight=False, soft_wrap=True)

JsonOption = Annotated[bool, typer.Option("--json", help="The Describe operation's shape.")]


def _call(operation: str, **params: Any) -> dict[str, Any]:
    """The SageMaker operation `operation` (boto3's method name), remote or local."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        raise _fail(str(exc)) from None
    if server_configured(settings):
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        client = boto3.session.Session().client("sagemaker")
        try:
            result: dict[str, Any] = getattr(client, operation)(**params)
        except ClientError as exc:
            raise _fail(exc.response["Error"].get("Message", str(exc))) from None
        except BotoCoreError as exc:
            raise _fail(str(exc)) from None
        result.pop("ResponseMetadata", None)
        return result
    from openmaker.algorithms.packages import ModelPackages
    from openmaker.algorithms.service import Algorithms
    from openmaker.algorithms.store import Store

    algorithms = Algorithms(Store.of(settings))
    packages = ModelPackages(Store.of(settings), algorithms)
    local: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
        "list_algorithms": algorithms.list,
        "describe_algorithm": lambda p: algorithms.describe(p["AlgorithmName"]),
        "list_model_packages": packages.list,
        "describe_model_package": lambda p: packages.describe(p["ModelPackageName"]),
    }
    try:
        return local[operation](params)
    except ServiceError as exc:
        raise _fail(exc.message) from None


def _every(operation: str, member: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    params: dict[str, Any] = {"MaxResults": 100}
    while True:
        page = _call(operation, **params)
        found += page[member]
        if not page.get("NextToken"):
            return found
        params["NextToken"] = page["NextToken"]


def _fail(message: str) -> typer.Exit:
    errors.print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(1)


def _when(value: Any) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if isinstance(value, datetime) else ""


def _print(found: dict[str, Any], as_json: bool, rows: list[tuple[str, Any]]) -> None:
    if as_json:
        print(json.dumps(found, indent=2, default=lambda v: v.isoformat()))
        return
    table = Table(Column(no_wrap=True), Column(overflow="fold"), show_header=False, box=None)
    for label, value in rows:
        if value not in (None, ""):
            table.add_row(label, escape(str(value)))
    console.print(table)


@algorithms_app.command("list")
def list_algorithms() -> None:
    """The algorithms, newest first: name, status, created."""
    table = Table("Name", "Status", "Created")
    for a in _every("list_algorithms", "AlgorithmSummaryList"):
        table.add_row(escape(a["AlgorithmName"]), a["AlgorithmStatus"], _when(a["CreationTime"]))
    console.print(table)


@algorithms_app.command("describe")
def describe_algorithm(name: str, as_json: JsonOption = False) -> None:
    """Show one algorithm: its image, hyperparameters, channels and validation."""
    found = _call("describe_algorithm", AlgorithmName=name)
    spec = found["TrainingSpecification"]
    rows: list[tuple[str, Any]] = [
        ("Name", found["AlgorithmName"]),
        ("Status", found["AlgorithmStatus"]),
        ("Image", spec["TrainingImage"]),
        ("Hyperparameters", ", ".join(
            f"{h['Name']} ({h['Type']}{', required' if h.get('IsRequired') else ''})"
            for h in spec.get("SupportedHyperParameters") or []
        )),
        ("Channels", ", ".join(
            f"{c['Name']}{' (required)' if c.get('IsRequired') else ''}"
            for c in spec["TrainingChannels"]
        )),
        ("Instance types", ", ".join(spec["SupportedTrainingInstanceTypes"])),
    ]  # fmt: skip
    for status in (found.get("AlgorithmStatusDetails") or {}).get("ValidationStatuses") or []:
        reason = f": {status['FailureReason']}" if status.get("FailureReason") else ""
        rows.append((f"Profile {status['Name']}", f"{status['Status']}{reason}"))
    rows.append(("Created", _when(found["CreationTime"])))
    _print(found, as_json, rows)


@model_packages_app.command("list")
def list_model_packages() -> None:
    """The model packages, newest first: name (and version), status, approval, created."""
    table = Table("Name", "Version", "Status", "Approval", "Created")
    for p in _every("list_model_packages", "ModelPackageSummaryList"):
        table.add_row(
            escape(p["ModelPackageName"]), str(p.get("ModelPackageVersion") or ""),
            p["ModelPackageStatus"], p.get("ModelApprovalStatus") or "", _when(p["CreationTime"]),
        )  # fmt: skip
    console.print(table)


@model_packages_app.command("describe")
def describe_model_package(name: str, as_json: JsonOption = False) -> None:
    """Show one model package (a name, or a version's ARN): its containers and approval."""
    found = _call("describe_model_package", ModelPackageName=name)
    containers = (found.get("InferenceSpecification") or {}).get("Containers") or []
    _print(
        found,
        as_json,
        [
            ("Name", found["ModelPackageName"]),
            ("Version", found.get("ModelPackageVersion")),
            ("ARN", found["ModelPackageArn"]),
            ("Status", found["ModelPackageStatus"]),
            ("Approval", found.get("ModelApprovalStatus")),
            *[(f"Container {i}", c.get("Image")) for i, c in enumerate(containers, 1)],
            ("Created", _when(found["CreationTime"])),
        ],
    )
