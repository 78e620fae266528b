"""`openmaker endpoints list / describe / delete / invoke` (`deploy`: cli/deploy.py): through
the server when AWS_ENDPOINT_URL_SAGEMAKER names one (boto3's sagemaker and sagemaker-runtime
clients), else on this machine's own database (an invocation then goes straight to an
instance, as the server's proxy sends it)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Column, Table
from rich.text import Text

from openmaker.cli.deploy import deploy
from openmaker.cli.output import console, fail, when
from openmaker.cli.sagemaker_calls import CallFailed as _Failed
from openmaker.cli.sagemaker_calls import SageMakerCalls
from openmaker.settings import Settings, SettingsError, load_settings

endpoints_app = typer.Typer(
    no_args_is_help=True, help="Deploy, look at, call and delete endpoints."
)


class _Endpoints:
    """The operations, remote or local, with one result shape (the API's)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.calls = SageMakerCalls(settings)
        self.remote = self.calls.remote

    def list(self) -> list[dict[str, Any]]:
        return self.calls.pages("ListEndpoints", "Endpoints")

    def describe(self, name: str) -> dict[str, Any]:
        return self.calls.call("DescribeEndpoint", EndpointName=name)

    def delete(self, name: str) -> None:
        self.calls.call("DeleteEndpoint", EndpointName=name)

    def invoke(self, name: str, body: bytes, content_type: str, accept: str | None) -> bytes:
        if self.remote:
            from botocore.exceptions import BotoCoreError, ClientError

            from openmaker.cli.remote import client  # boto3 loads only through a server

            runtime = client("sagemaker-runtime")
            extra = {"Accept": accept} if accept else {}
            try:
                answer = runtime.invoke_endpoint(
                    EndpointName=name, Body=body, ContentType=content_type, **extra
                )
            except ClientError as exc:
                raise _Failed(exc.response["Error"].get("Message", str(exc))) from None
            except BotoCoreError as exc:
                raise _Failed(str(exc)) from None
            data: bytes = answer["Body"].read()
            return data
        from openmaker.serving.proxy import InvocationError, Invoker
        from openmaker.serving.service import Serving

        invoker = Invoker(
            Serving(self.settings).endpoints, self.settings.region, self.settings.account_id
        )
        headers = {"Content-Type": content_type} | ({"Accept": accept} if accept else {})
        try:
            return invoker.invoke(name, body, headers, None).body
        except InvocationError as exc:
            raise _Failed(exc.message) from None


def _service() -> _Endpoints:
    try:
        return _Endpoints(load_settings())
    except SettingsError as exc:
        raise fail(str(exc)) from None


@endpoints_app.command("list")
def list_endpoints() -> None:
    """List endpoints, newest first."""
    try:
        found = _service().list()
    except _Failed as exc:
        raise fail(str(exc)) from None
    longest = max((len(e["EndpointName"]) for e in found), default=4)
    table = Table(
        Column("Name", no_wrap=True, min_width=longest),
        Column("Status", no_wrap=True),
        Column("Created", no_wrap=True),
    )
    for endpoint in found:
        table.add_row(
            endpoint["EndpointName"], endpoint["EndpointStatus"], when(endpoint["CreationTime"])
        )
    console.print(table)


@endpoints_app.command("describe")
def describe_endpoint(
    name: str,
    as_json: Annotated[bool, typer.Option("--json", help="The DescribeEndpoint shape.")] = False,
) -> None:
    """Show one endpoint: status, configuration, each variant's weights and instances."""
    try:
        found = _service().describe(name)
    except _Failed as exc:
        raise fail(str(exc)) from None
    if as_json:
        print(json.dumps(found, indent=2, default=lambda v: v.isoformat()))
        return
    table = Table(Column(no_wrap=True), Column(overflow="fold"), show_header=False, box=None)
    table.add_row("Name", found["EndpointName"])
    table.add_row("Status", found["EndpointStatus"])
    table.add_row("Config", found["EndpointConfigName"])
    if found.get("FailureReason"):
        table.add_row("Failure", Text(found["FailureReason"]))
    if found.get("PendingDeploymentSummary"):
        table.add_row("Deploying", found["PendingDeploymentSummary"]["EndpointConfigName"])
    table.add_row("Created", when(found["CreationTime"]))
    console.print(table)
    variants = Table("Variant", "Weight (now → desired)", "Instances (now → desired)")
    for v in found.get("ProductionVariants", []):
        variants.add_row(
            v["VariantName"],
            f"{v.get('CurrentWeight', 0):g} → {v.get('DesiredWeight', 0):g}",
            f"{v.get('CurrentInstanceCount', 0)} → {v.get('DesiredInstanceCount', 0)}",
        )
    console.print(variants)


@endpoints_app.command("delete")
def delete_endpoint(name: str) -> None:
    """Delete an endpoint: its instances stop (SIGTERM, then SIGKILL after the grace)."""
    try:
        _service().delete(name)
    except _Failed as exc:
        raise fail(str(exc)) from None
    console.print(f"Deleting {name}")


@endpoints_app.command("invoke")
def invoke_endpoint(
    name: str,
    input_file: Annotated[Path, typer.Argument(help="The request body ('-': standard input).")],
    output_file: Annotated[
        Path | None, typer.Argument(help="Where the answer goes (default: standard output).")
    ] = None,
    content_type: Annotated[str, typer.Option(help="The body's Content-Type.")] = (
        "application/octet-stream"
    ),
    accept: Annotated[str | None, typer.Option(help="The Accept header.")] = None,
) -> None:
    """Invoke an endpoint with a file's content; its answer to a file or standard output."""
    body = sys.stdin.buffer.read() if str(input_file) == "-" else input_file.read_bytes()
    try:
        answer = _service().invoke(name, body, content_type, accept)
    except _Failed as exc:
        raise fail(str(exc)) from None
    if output_file is None:
        sys.stdout.buffer.write(answer)
        sys.stdout.buffer.flush()
    else:
        output_file.write_bytes(answer)


endpoints_app.command("deploy")(deploy)  # openmaker/cli/deploy.py
