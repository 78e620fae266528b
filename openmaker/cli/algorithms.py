"""`openmaker algorithms list / describe` and `openmaker model-packages list / describe`:
through the server when AWS_ENDPOINT_URL_SAGEMAKER names one (boto3's sagemaker client), else on
this machine's own database."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Column, Table

from openmaker.cli.output import console, fail, json_default, when
from openmaker.cli.sagemaker_calls import CallFailed, Handler, SageMakerCalls
from openmaker.settings import SettingsError, load_settings

algorithms_app = typer.Typer(no_args_is_help=True, help="Look at algorithms.")
model_packages_app = typer.Typer(no_args_is_help=True, help="Look at model packages.")

JsonOption = Annotated[bool, typer.Option("--json", help="The Describe operation's shape.")]


class _Calls(SageMakerCalls):
    """The serving commands' calls, read here from the algorithms' own services when no
    server is named (nothing moves a validation on: only the server does)."""

    def _handlers(self) -> dict[str, Handler]:
        from openmaker.algorithms.packages import ModelPackages
        from openmaker.algorithms.service import Algorithms
        from openmaker.algorithms.store import Store

        algorithms = Algorithms(Store.of(self.settings))
        packages = ModelPackages(Store.of(self.settings), algorithms)
        return {
            "ListAlgorithms": algorithms.list,
            "DescribeAlgorithm": lambda p: algorithms.describe(p["AlgorithmName"]),
            "ListModelPackages": packages.list,
            "DescribeModelPackage": lambda p: packages.describe(p["ModelPackageName"]),
        }


def _call(operation: str, **params: Any) -> dict[str, Any]:
    try:
        return _Calls(load_settings()).call(operation, **params)
    except (CallFailed, SettingsError) as exc:
        raise fail(str(exc)) from None


def _every(operation: str, member: str) -> list[dict[str, Any]]:
    try:
        return _Calls(load_settings()).pages(operation, member)
    except (CallFailed, SettingsError) as exc:
        raise fail(str(exc)) from None


def _print(found: dict[str, Any], as_json: bool, rows: list[tuple[str, Any]]) -> None:
    if as_json:
        print(json.dumps(found, indent=2, default=json_default))
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
    for a in _every("ListAlgorithms", "AlgorithmSummaryList"):
        table.add_row(escape(a["AlgorithmName"]), a["AlgorithmStatus"], when(a["CreationTime"]))
    console.print(table)


@algorithms_app.command("describe")
def describe_algorithm(name: str, as_json: JsonOption = False) -> None:
    """Show one algorithm: its image, hyperparameters, channels and validation."""
    found = _call("DescribeAlgorithm", AlgorithmName=name)
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
    rows.append(("Created", when(found["CreationTime"])))
    _print(found, as_json, rows)


@model_packages_app.command("list")
def list_model_packages() -> None:
    """The model packages, newest first: name (and version), status, approval, created."""
    table = Table("Name", "Version", "Status", "Approval", "Created")
    for p in _every("ListModelPackages", "ModelPackageSummaryList"):
        table.add_row(
            escape(p["ModelPackageName"]), str(p.get("ModelPackageVersion") or ""),
            p["ModelPackageStatus"], p.get("ModelApprovalStatus") or "", when(p["CreationTime"]),
        )  # fmt: skip
    console.print(table)


@model_packages_app.command("describe")
def describe_model_package(name: str, as_json: JsonOption = False) -> None:
    """Show one model package (a name, or a version's ARN): its containers and approval."""
    found = _call("DescribeModelPackage", ModelPackageName=name)
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
            ("Created", when(found["CreationTime"])),
        ],
    )
