"""What `openmaker transform` and `openmaker process` share: their jobs' operations through the
server when AWS_ENDPOINT_URL_SAGEMAKER names one (boto3), else on this machine (the API's own
handlers, the request checked against the API model as the server checks it); following a job
to its end (status changes and log lines); and the `list`, `describe`, `stop`, `logs` commands.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Column, Table
from rich.text import Text

from openmaker.cli.output import console, fail, json_default, when
from openmaker.connection import server_configured
from openmaker.settings import Settings, SettingsError, load_settings
from openmaker.shapes.errors import ServiceError

POLL_SECONDS = 0.5
ENDED = ("Completed", "Failed", "Stopped")


@dataclass(frozen=True)
class Kind:
    """One kind of job as its operations name it: `Transform` or `Processing`."""

    word: str  # Transform | Processing
    log_group: str
    noun: str  # transform job | processing job
    command: str  # transform | process

    @property
    def name_key(self) -> str:
        return f"{self.word}JobName"

    @property
    def status_key(self) -> str:
        return f"{self.word}JobStatus"

    def operation(self, verb: str) -> str:
        return f"{verb}{self.word}Job" + ("s" if verb == "List" else "")


class Failed(Exception):
    pass


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        raise fail(str(exc)) from None


class KindJobs:
    """The kind's operations and its log lines, remote or local, in the API's shapes."""

    def __init__(self, settings: Settings, kind: Kind, submitting: bool = False) -> None:
        self.settings, self.kind = settings, kind
        self.remote = server_configured(settings)
        self._handlers: dict[str, Callable[[dict[str, Any]], Any]] | None = None
        self._tokens: dict[str, str] = {}
        if submitting and not self.remote:
            from openmaker.jobs.executor import executor_for
            from openmaker.resources import KINDS

            runner = next(k.runner for k in KINDS if k.name == f"{kind.word}Job")
            executor_for(settings).start_ahead(runner)

    def call(self, verb: str, **params: Any) -> dict[str, Any]:
        operation = self.kind.operation(verb)
        if self.remote:
            return _boto3_call("sagemaker", operation, params)
        from openmaker.shapes.validate import validate_input

        try:
            validate_input(operation, params)
            result = self._local()[operation](params)
        except ServiceError as exc:
            raise Failed(str(exc)) from None
        return dict(result or {})

    def _local(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        if self._handlers is None:
            from openmaker.api.operations import Handlers

            handlers = Handlers()
            if self.kind.word == "Transform":
                from openmaker.api.transform import TransformHandlers
                from openmaker.serving.service import Serving
                from openmaker.transform.service import TransformJobs

                jobs = TransformJobs(self.settings, Serving(self.settings).models)
                TransformHandlers(jobs).register(handlers)
            else:
                from openmaker.api.processing import ProcessingHandlers
                from openmaker.processing.service import ProcessingJobs

                ProcessingHandlers(ProcessingJobs(self.settings)).register(handlers)
            self._handlers = handlers.of("sagemaker")
        return self._handlers

    def new_lines(self, name: str) -> list[tuple[int, str, str]]:
        """The job's log lines not returned yet: (time in ms, stream, message)."""
        found: list[tuple[int, str, str]] = []
        for stream in self._streams(name):
            params: dict[str, Any] = {
                "logGroupName": self.kind.log_group,
                "logStreamName": stream,
                "startFromHead": True,
            }
            if stream in self._tokens:
                params["nextToken"] = self._tokens[stream]
            page = self._logs("GetLogEvents", params)
            self._tokens[stream] = page["nextForwardToken"]
            found += [(e["timestamp"], stream, e["message"]) for e in page["events"]]
        return sorted(found)

    def _streams(self, name: str) -> list[str]:
        params = {"logGroupName": self.kind.log_group, "logStreamNamePrefix": f"{name}/"}
        return [s["logStreamName"] for s in self._logs("DescribeLogStreams", params)["logStreams"]]

    def _logs(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        if self.remote:
            return _boto3_call("logs", operation, params)
        from openmaker.jobs.cloudwatch import LogQueries, Window

        queries = LogQueries.of(self.settings, (self.kind.log_group,))
        if operation == "DescribeLogStreams":
            return queries.describe_log_streams(
                params["logGroupName"], params["logStreamNamePrefix"]
            )
        try:
            return queries.get_log_events(
                params["logGroupName"],
                params["logStreamName"],
                Window(None, None),
                token=params.get("nextToken"),
                from_head=True,
            )
        except ServiceError as exc:
            raise Failed(str(exc)) from None


def _boto3_call(service: str, operation: str, params: dict[str, Any]) -> dict[str, Any]:
    from botocore.exceptions import BotoCoreError, ClientError

    from openmaker.cli.remote import client  # boto3 loads only through a server

    made = client(service)  # one per command: a follower calls every few tenths of a second
    method = made.meta.method_to_api_mapping
    name = next(python for python, api in method.items() if api == operation)
    try:
        result: dict[str, Any] = getattr(made, name)(**params)
    except ClientError as exc:
        raise Failed(exc.response["Error"].get("Message", str(exc))) from None
    except BotoCoreError as exc:
        raise Failed(f"cannot reach the openmaker server: {exc}") from None
    result.pop("ResponseMetadata", None)
    return result


def load_request(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise fail(f"cannot read the request {path}: {exc}") from None
    if not isinstance(loaded, dict):
        raise fail(f"the request {path} is not a JSON object")
    return loaded


def unique_name(base: str) -> str:
    return f"{base}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


def submit(jobs: KindJobs, request: dict[str, Any], wait: bool) -> None:
    """Create the job; with `wait`, follow it to its end (a failed or stopped one exits 1)."""
    kind = jobs.kind
    name = request[kind.name_key]
    try:
        arn = next(iter(jobs.call("Create", **request).values()))
    except Failed as exc:
        raise fail(str(exc)) from None
    console.print(f"Created {kind.noun} [bold]{name}[/bold] ({arn})")
    if not wait:
        console.print(f"Follow it with: openmaker {kind.command} logs {name} --follow")
        return
    try:
        described = follow(jobs, name)
    except KeyboardInterrupt:
        console.print(
            f"\nStopped following; the job goes on. Stop it: openmaker {kind.command} stop {name}"
        )
        raise typer.Exit(130) from None
    except Failed as exc:
        raise fail(str(exc)) from None
    status = described[kind.status_key]
    if status != "Completed":
        reason = described.get("FailureReason") or status
        raise fail(f"{kind.noun} {name} {status.lower()}: {reason}")
    console.print(f"[green]Completed.[/green] {_outputs(described)}")


def follow(jobs: KindJobs, name: str, logs: bool = True) -> dict[str, Any]:
    """Print the job's status as it changes and its log lines until it ends."""
    shown = None
    while True:
        # Read the status first: every line written before the job ended is then printed.
        described = jobs.call("Describe", **{jobs.kind.name_key: name})
        status = described[jobs.kind.status_key]
        if status != shown:
            console.print(f"[bold]{escape(status)}[/bold]")
            shown = status
        for _, stream, message in jobs.new_lines(name) if logs else []:
            host = stream.split("/", 1)[-1].rsplit("-", 1)[0]
            console.print(f"[dim]{escape(host)}[/dim] {escape(message)}")
        if status in ENDED:
            return described
        time.sleep(POLL_SECONDS)


def _outputs(described: dict[str, Any]) -> str:
    if "TransformOutput" in described:
        return f"Output: {escape(described['TransformOutput']['S3OutputPath'])}"
    outputs = (described.get("ProcessingOutputConfig") or {}).get("Outputs") or []
    uris = [o["S3Output"]["S3Uri"] for o in outputs if o.get("S3Output")]
    return f"Outputs: {escape(', '.join(uris))}" if uris else ""


def add_commands(app: typer.Typer, kind: Kind) -> None:
    """`list`, `describe`, `stop` and `logs` for the kind's jobs."""

    @app.command("list")
    def list_jobs(
        status: Annotated[str | None, typer.Option(help="Only jobs in this status.")] = None,
        name_contains: Annotated[str | None, typer.Option()] = None,
    ) -> None:
        """List the jobs, newest first."""
        jobs = KindJobs(settings_or_exit(), kind)
        params: dict[str, Any] = {"SortOrder": "Descending", "MaxResults": 100}
        if status:
            params["StatusEquals"] = status
        if name_contains:
            params["NameContains"] = name_contains
        found: list[dict[str, Any]] = []
        try:
            while True:
                page = jobs.call("List", **params)
                found += page[f"{kind.word}JobSummaries"]
                if not page.get("NextToken"):
                    break
                params["NextToken"] = page["NextToken"]
        except Failed as exc:
            raise fail(str(exc)) from None
        longest = max((len(job[kind.name_key]) for job in found), default=4)
        table = Table(
            Column("Name", no_wrap=True, min_width=longest),
            Column("Status", no_wrap=True, min_width=10),
            Column("Created", no_wrap=True, min_width=19),
        )
        for job in found:
            table.add_row(job[kind.name_key], job[kind.status_key], when(job["CreationTime"]))
        console.print(table)

    @app.command("describe")
    def describe_job(
        name: str,
        as_json: Annotated[bool, typer.Option("--json", help="The API's shape.")] = False,
    ) -> None:
        """Show one job."""
        try:
            described = KindJobs(settings_or_exit(), kind).call("Describe", **{kind.name_key: name})
        except Failed as exc:
            raise fail(str(exc)) from None
        if as_json:
            print(json.dumps(described, indent=2, default=json_default))
            return
        table = Table(Column(no_wrap=True), Column(overflow="fold"), show_header=False, box=None)
        table.add_row("Name", described[kind.name_key])
        table.add_row("Status", described[kind.status_key])
        for key in ("FailureReason", "ExitMessage"):
            if described.get(key):
                table.add_row(key, Text(described[key]))
        table.add_row("Created", when(described["CreationTime"]))
        table.add_row("", Text(_outputs(described)))
        console.print(table)

    @app.command("stop")
    def stop_job(name: str) -> None:
        """Stop a job."""
        try:
            KindJobs(settings_or_exit(), kind).call("Stop", **{kind.name_key: name})
        except Failed as exc:
            raise fail(str(exc)) from None
        console.print(f"Stopping {name}")

    @app.command("logs")
    def job_logs(
        name: str,
        follow_: Annotated[bool, typer.Option("--follow", "-f", help="Until it ends.")] = False,
    ) -> None:
        """Print a job's log lines."""
        jobs = KindJobs(settings_or_exit(), kind)
        try:
            if follow_:
                follow(jobs, name)
                return
            jobs.call("Describe", **{kind.name_key: name})
            for _, stream, message in jobs.new_lines(name):
                host = stream.split("/", 1)[-1].rsplit("-", 1)[0]
                console.print(f"[dim]{escape(host)}[/dim] {escape(message)}")
        except Failed as exc:
            raise fail(str(exc)) from None
