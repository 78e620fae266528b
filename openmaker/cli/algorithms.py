"""`openmaker algorithms create / list / describe / delete`, `openmaker model-packages` the same,
and `openmaker model-package-groups create / list / delete`: through the server when
AWS_ENDPOINT_URL_SAGEMAKER names one (boto3's sagemaker client), else on this machine's own
database. A create command takes the Create* request as a JSON file (`--request`, as
`openmaker train` and `openmaker transform` do)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Column, Table

from openmaker.cli.kind_jobs import load_request
from openmaker.cli.output import console, fail, json_default, when
from openmaker.cli.sagemaker_calls import CallFailed, Handler, SageMakerCalls
from openmaker.settings import SettingsError, load_settings

algorithms_app = typer.Typer(no_args_is_help=True, help="Create, look at, delete algorithms.")
model_packages_app = typer.Typer(
    no_args_is_help=True, help="Create, look at, delete model packages."
)
groups_app = typer.Typer(no_args_is_help=True, help="Create, list, delete model package groups.")

JsonOption = Annotated[bool, typer.Option("--json", help="The Describe operation's shape.")]


def request_option(operation: str) -> Any:
    return typer.Option("--request", help=f"A {operation} request as JSON (a file).")


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
            "CreateAlgorithm": algorithms.create,
            "ListAlgorithms": algorithms.list,
            "DescribeAlgorithm": lambda p: algorithms.describe(p["AlgorithmName"]),
            "DeleteAlgorithm": _deleting(algorithms.delete, "AlgorithmName"),
            "CreateModelPackage": packages.create,
            "ListModelPackages": packages.list,
            "DescribeModelPackage": lambda p: packages.describe(p["ModelPackageName"]),
            "DeleteModelPackage": _deleting(packages.delete, "ModelPackageName"),
            "CreateModelPackageGroup": packages.create_group,
            "ListModelPackageGroups": packages.list_groups,
            "DeleteModelPackageGroup": _deleting(packages.delete_group, "ModelPackageGroupName"),
        }


def _deleting(delete: Callable[[str], None], member: str) -> Handler:
    """A Delete* handler: the resource named by `member` deleted, nothing answered."""

    def handler(params: dict[str, Any]) -> dict[str, Any]:
        delete(params[member])
        return {}

    return handler


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


@algorithms_app.command("create")
def create_algorithm(
    request_file: Annotated[Path, request_option("CreateAlgorithm")],
) -> None:
    """Register an algorithm from a CreateAlgorithm request; its validation (if it has a
    ValidationSpecification) runs on the server."""
    request = load_request(request_file)
    arn = _call("CreateAlgorithm", **request)["AlgorithmArn"]
    console.print(f"Created algorithm [bold]{escape(request['AlgorithmName'])}[/bold] ({arn})")


@algorithms_app.command("delete")
def delete_algorithm(name: str) -> None:
    """Delete an algorithm (jobs trained with it stay)."""
    _call("DeleteAlgorithm", AlgorithmName=name)
    console.print(f"Deleted {escape(name)}")


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


@model_packages_app.command("create")
def create_model_package(
    request_file: Annotated[Path, request_option("CreateModelPackage")],
) -> None:
    """Make a model package (or a group's next version) from a CreateModelPackage request."""
    request = load_request(request_file)
    arn = _call("CreateModelPackage", **request)["ModelPackageArn"]
    console.print(f"Created model package {escape(arn)}")


@model_packages_app.command("delete")
def delete_model_package(name: str) -> None:
    """Delete a model package (a name, or a version's ARN); models made from it go on."""
    _call("DeleteModelPackage", ModelPackageName=name)
    console.print(f"Deleted {escape(name)}")


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


@groups_app.command("create")
def create_group(
    name: Annotated[str | None, typer.Argument(help="ModelPackageGroupName.")] = None,
    description: Annotated[str | None, typer.Option(help="Its description.")] = None,
    request_file: Annotated[Path | None, request_option("CreateModelPackageGroup")] = None,
) -> None:
    """Make a model package group, by name or from a CreateModelPackageGroup request."""
    if (name is None) == (request_file is None):
        raise fail("give the group's name or --request FILE, one of them")
    request = load_request(request_file) if request_file else {"ModelPackageGroupName": name}
    if description is not None:
        request["ModelPackageGroupDescription"] = description
    arn = _call("CreateModelPackageGroup", **request)["ModelPackageGroupArn"]
    console.print(f"Created model package group {escape(arn)}")


@groups_app.command("list")
def list_groups() -> None:
    """The model package groups: name, description, created."""
    table = Table("Name", "Description", "Created")
    for g in _every("ListModelPackageGroups", "ModelPackageGroupSummaryList"):
        table.add_row(
            escape(g["ModelPackageGroupName"]),
            escape(g.get("ModelPackageGroupDescription") or ""),
            when(g["CreationTime"]),
        )
    console.print(table)


@groups_app.command("delete")
def delete_group(name: str) -> None:
    """Delete a model package group (it must hold no versions)."""
    _call("DeleteModelPackageGroup", ModelPackageGroupName=name)
    console.print(f"Deleted {escape(name)}")
