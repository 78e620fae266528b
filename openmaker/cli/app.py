"""The `openmaker` command."""

from __future__ import annotations

import gc
import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Column, Table
from rich.text import Text

from openmaker.cli.algorithms import algorithms_app, groups_app, model_packages_app
from openmaker.cli.endpoints import endpoints_app
from openmaker.cli.images import images_app
from openmaker.cli.output import console, errors, fail, json_default, when
from openmaker.cli.process import process_app
from openmaker.cli.request_builder import (
    DEFAULT_INSTANCE_TYPE,
    DEFAULT_MAX_RUN,
    TrainFlags,
    build_request,
    load_request,
)
from openmaker.cli.serving_resources import endpoint_configs_app, models_app
from openmaker.cli.transform import transform_app
from openmaker.cli.watch import changes_file, follow, print_logs
from openmaker.connection import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_S3_PORT,
    ServerRecord,
    client_environment,
    read_record,
    server_configured,
)
from openmaker.home import HomeError
from openmaker.settings import Settings, SettingsError, StoreSettings, load_settings
from openmaker.shapes.errors import ServiceError
from openmaker.store.errors import StoreError
from openmaker.training.status import TrainingJobStatus

if TYPE_CHECKING:
    from openmaker.cli.remote import RemoteJobs
    from openmaker.training.service import TrainingJobs

app = typer.Typer(no_args_is_help=True, help="SageMaker training jobs on your own machines.")
jobs_app = typer.Typer(no_args_is_help=True, help="Look at and control training jobs.")
app.add_typer(jobs_app, name="jobs")
app.add_typer(endpoints_app, name="endpoints")  # openmaker/cli/endpoints.py
app.add_typer(images_app, name="images")  # openmaker/cli/images.py
app.add_typer(models_app, name="models")  # openmaker/cli/serving_resources.py
app.add_typer(endpoint_configs_app, name="endpoint-configs")
app.add_typer(transform_app, name="transform")  # openmaker/cli/transform.py
app.add_typer(process_app, name="process")  # openmaker/cli/process.py
app.add_typer(algorithms_app, name="algorithms")  # openmaker/cli/algorithms.py
app.add_typer(model_packages_app, name="model-packages")  # openmaker/cli/algorithms.py
app.add_typer(groups_app, name="model-package-groups")  # openmaker/cli/algorithms.py


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {value!r}", param_hint=flag)
        result[key] = rest
    return result


def _settings() -> Settings:
    """The settings of this command (read once, at its start); a bad one ends it in one line
    naming the variable."""
    try:
        return load_settings()
    except SettingsError as exc:
        raise fail(str(exc)) from None


def _service(settings: Settings, submitting: bool = False) -> TrainingJobs | RemoteJobs:
    """Through the server when AWS_ENDPOINT_URL_SAGEMAKER names one, else in this process
    (`submitting`: with the job's worker started first, to start while this process goes on)."""
    if server_configured(settings):
        from openmaker.cli.remote import RemoteJobs  # boto3 loads only when it is used

        return RemoteJobs()
    from openmaker.jobs.executor import executor_for

    executor = executor_for(settings)
    if submitting:
        from openmaker.training.kind import TRAINING  # light: no SQLAlchemy, no botocore

        executor.start_ahead(TRAINING.runner)
    # SQLAlchemy and the job machinery load only when jobs run in this process.
    from openmaker.training.service import TrainingJobs

    # A submission sweeps after its create (`_submit`), while the job's worker starts.
    return TrainingJobs(settings, executor, sweep=not submitting)


@app.command()
def train(
    request_file: Annotated[
        Path | None, typer.Option("--request", help="A CreateTrainingJob request as JSON.")
    ] = None,
    entry_point: Annotated[
        str | None, typer.Option(help="Script mode: the program to run, e.g. train.py.")
    ] = None,
    source_dir: Annotated[
        Path | None, typer.Option(help="Script mode: the folder holding the code.")
    ] = None,
    image: Annotated[
        str | None, typer.Option(help="A local image folder with an executable 'train'.")
    ] = None,
    inputs: Annotated[
        list[str], typer.Option("--input", help="A channel: NAME=URI (s3://..., or a folder).")
    ] = [],  # noqa: B006 - typer reads the default, never mutates it
    hyperparameters: Annotated[
        list[str], typer.Option("--hyperparameter", help="KEY=VALUE, repeatable.")
    ] = [],  # noqa: B006
    environment: Annotated[
        list[str], typer.Option("--environment", help="KEY=VALUE for the code, repeatable.")
    ] = [],  # noqa: B006
    output: Annotated[str | None, typer.Option(help="S3OutputPath (s3://... or a folder).")] = None,
    checkpoint: Annotated[str | None, typer.Option(help="CheckpointConfig.S3Uri.")] = None,
    instance_type: Annotated[str, typer.Option()] = DEFAULT_INSTANCE_TYPE,
    instance_count: Annotated[int, typer.Option()] = 1,
    max_run: Annotated[int, typer.Option(help="MaxRuntimeInSeconds.")] = DEFAULT_MAX_RUN,
    job_name: Annotated[str | None, typer.Option(help="Default: a unique name.")] = None,
    base_job_name: Annotated[str, typer.Option()] = "openmaker",
    role: Annotated[str | None, typer.Option(help="RoleArn (recorded, not used).")] = None,
    wait: Annotated[bool, typer.Option(help="Follow the job until it ends.")] = True,
) -> None:
    """Run a training job, from a full request or from flags."""
    settings = _settings()
    try:
        if request_file is not None:
            request = load_request(request_file)
        else:
            flags = TrainFlags(
                job_name=job_name,
                base_job_name=base_job_name,
                image=image,
                entry_point=entry_point,
                source_dir=source_dir,
                inputs=_pairs(inputs, "--input"),
                hyperparameters=_pairs(hyperparameters, "--hyperparameter"),
                environment=_pairs(environment, "--environment"),
                output=output,
                checkpoint=checkpoint,
                instance_type=instance_type,
                instance_count=instance_count,
                max_run=max_run,
                role=role,
            )
            request = build_request(flags, settings)
    except (ValueError, OSError, StoreError) as exc:
        raise fail(str(exc)) from None
    _submit(_service(settings, submitting=True), request, wait, settings)


def _submit(
    service: TrainingJobs | RemoteJobs, request: dict[str, Any], wait: bool, settings: Settings
) -> None:
    try:
        arn = service.create(request)["TrainingJobArn"]
    except ServiceError as exc:
        raise fail(str(exc)) from None
    name = request["TrainingJobName"]
    console.print(f"Created training job [bold]{name}[/bold] ({arn})")
    # Jobs whose worker died with nobody watching: their capacity frees for waiting ones.
    service.sweep()
    if not wait:
        console.print(f"Follow it with: openmaker jobs logs {name} --follow")
        return
    _wait_and_report(service, name, settings)


def _wait_and_report(
    service: TrainingJobs | RemoteJobs, name: str, settings: Settings
) -> dict[str, Any]:
    # In-process, the database's file tells when to look again.
    wake = None if server_configured(settings) else changes_file(settings.database_url)
    try:
        description = follow(service, name, console, wake=wake)
    except KeyboardInterrupt:
        raise _stopped_following(name) from None
    status = description["TrainingJobStatus"]
    model = description.get("ModelArtifacts", {}).get("S3ModelArtifacts", "")
    if status == TrainingJobStatus.COMPLETED:
        console.print(f"[green]Completed.[/green] Model: {escape(model)}")
        local = _local_copy(model, settings.store)
        if local:
            console.print(f"(on this machine: {escape(str(local))})")
        return description
    reason = description.get("FailureReason") or description["SecondaryStatus"]
    raise fail(f"training job {name} {status.lower()}: {reason}")


def _stopped_following(name: str) -> typer.Exit:
    """Ctrl-C while following: the job runs in a worker of its own and goes on."""
    console.print(f"\nStopped following; the job goes on. Stop it: openmaker jobs stop {name}")
    return typer.Exit(130)


def _local_copy(uri: str, store: StoreSettings) -> Path | None:
    """Where an object of the embedded store lives on disk, when that is where it is."""
    if uri.startswith("s3://") and store.endpoint is None:
        return store.embedded_dir / uri.removeprefix("s3://")
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    return None


@app.command()
def demo() -> None:
    """Train a scikit-learn classifier on the digits data set, on the embedded default."""
    from openmaker.demo.run import prepare_demo

    settings = _settings()
    console.print("Demo: logistic regression on scikit-learn's digits, in script mode")
    request = build_request(prepare_demo(settings), settings)
    _submit(_service(settings, submitting=True), request, True, settings)


@jobs_app.command("list")
def list_jobs(
    status: Annotated[str | None, typer.Option(help="Only jobs in this status.")] = None,
    name_contains: Annotated[str | None, typer.Option()] = None,
) -> None:
    """List training jobs, newest first."""
    settings = _settings()
    found = None
    if not server_configured(settings):
        from openmaker.training.list_view import ended_jobs  # sqlite3 alone: starts fast

        found = ended_jobs(settings, status=status, name_contains=name_contains)
    if found is None:
        found = _service(settings).list(status=status, name_contains=name_contains)
    # Names are what people copy into the next command: never cut one short.
    longest = max((len(job["TrainingJobName"]) for job in found), default=4)
    table = Table(
        Column("Name", no_wrap=True, min_width=longest),
        Column("Status", no_wrap=True, min_width=10),
        Column("Created", no_wrap=True, min_width=19),
        Column("Ended", no_wrap=True, min_width=19),
    )
    for job in found:
        ended = job.get("TrainingEndTime")
        table.add_row(
            job["TrainingJobName"],
            job["TrainingJobStatus"],
            when(job["CreationTime"]),
            when(ended) if ended else "",
        )
    console.print(table)


@jobs_app.command("describe")
def describe_job(
    name: str,
    as_json: Annotated[bool, typer.Option("--json", help="The DescribeTrainingJob shape.")] = False,
) -> None:
    """Show one training job."""
    try:
        description = _service(_settings()).describe(name)
    except ServiceError as exc:
        raise fail(str(exc)) from None
    if as_json:
        print(json.dumps(description, indent=2, default=json_default))
        return
    # Values fold rather than end in "…": a model URI is copied whole.
    table = Table(Column(no_wrap=True), Column(overflow="fold"), show_header=False, box=None)
    table.add_row("Name", description["TrainingJobName"])
    table.add_row(
        "Status", f"{description['TrainingJobStatus']} ({description['SecondaryStatus']})"
    )
    # Text, not markup: a reason or a URI may hold square brackets.
    if description.get("FailureReason"):
        table.add_row("Failure", Text(description["FailureReason"]))
    table.add_row("Image", Text(description["AlgorithmSpecification"]["TrainingImage"]))
    model = description.get("ModelArtifacts", {}).get("S3ModelArtifacts")
    table.add_row("Model", Text(model or "(none written)"))
    table.add_row("Created", when(description["CreationTime"]))
    if "TrainingTimeInSeconds" in description:
        table.add_row("Training time", f"{description['TrainingTimeInSeconds']} s")
    console.print(table)
    steps = Table("Status", "Started", "Message")
    for step in description["SecondaryStatusTransitions"]:
        steps.add_row(step["Status"], when(step["StartTime"]), Text(step["StatusMessage"]))
    console.print(steps)


@jobs_app.command("logs")
def job_logs(
    name: str,
    follow_: Annotated[bool, typer.Option("--follow", "-f", help="Wait for new lines.")] = False,
) -> None:
    """Print a job's log lines."""
    service = _service(_settings())
    try:
        service.describe(name)
    except ServiceError as exc:
        raise fail(str(exc)) from None
    try:
        print_logs(service, name, console, follow_)
    except KeyboardInterrupt:
        raise _stopped_following(name) from None


@jobs_app.command("stop")
def stop_job(name: str) -> None:
    """Stop a job: SIGTERM to its code, then SIGKILL after the grace period."""
    try:
        _service(_settings()).stop(name)
    except ServiceError as exc:
        raise fail(str(exc)) from None
    console.print(f"Stopping {name}")


@app.command()
def server(
    host: Annotated[str, typer.Option(help="The address to listen on.")] = DEFAULT_HOST,
    port: Annotated[int, typer.Option(help="The SageMaker and Logs API port.")] = DEFAULT_PORT,
    s3_port: Annotated[
        int, typer.Option(help="The embedded store's S3 endpoint port.")
    ] = DEFAULT_S3_PORT,
) -> None:
    """Serve the SageMaker API, CloudWatch Logs and the embedded store's S3 endpoint."""
    from openmaker.jobs.executor import stop_fork_server, use_fork_server
    from openmaker.resources import KINDS

    # First, while this process has no thread or socket: the jobs' workers are forked from it.
    settings = _settings()
    database = (settings.database_url, settings.db_busy_seconds)
    use_fork_server(sorted({kind.runner for kind in KINDS}), settings.executor, database)
    from openmaker.api.server import serve  # the HTTP stack loads only for this command

    def announce(record: ServerRecord, store: StoreSettings) -> None:
        console.print(f"SageMaker and CloudWatch Logs API: {record.api_url}")
        if record.s3_url:
            console.print(f"S3 endpoint of the embedded store: {record.s3_url}")
        elif (upstream := store.endpoint) is not None:
            # The S3 server in AWS_ENDPOINT_URL_S3 serves clients and transfers directly.
            gate = store.gate_url
            console.print(
                f"S3: {upstream.url} (AWS_ENDPOINT_URL_S3); no S3 endpoint of openmaker's own"
                + (f", but a gate for the jobs' code alone on {gate}" if gate else "")
            )
        console.print('Point AWS clients here with: eval "$(openmaker env)"')

    try:
        serve(_settings(), host, port, s3_port, announce)
    except (OSError, RuntimeError, HomeError) as exc:
        raise fail(f"the server could not start: {exc}") from None
    finally:
        stop_fork_server()  # the workers go on


@app.command("env")
def env_command() -> None:
    """Print the export lines that point boto3, the aws CLI and the sagemaker SDK at the
    running server: eval "$(openmaker env)"."""
    from openmaker.api.credentials import KEY_VARIABLE, SECRET_VARIABLE, configured_credentials
    from openmaker.sdk_config import write_sdk_config

    settings = _settings()
    record = read_record(settings)
    if record is None:
        raise fail(
            "no openmaker server is running for this OPENMAKER_HOME; start one with "
            "'openmaker server'"
        )
    credentials = configured_credentials(settings)
    # A server given its pair in the environment stored none: only the same variables tell it.
    server_key = record.access_key_id
    if credentials is None or (server_key and credentials.access_key_id != server_key):
        raise fail(
            f"the server checks signatures with access key {server_key or '(unknown)'}, "
            f"given to it in {KEY_VARIABLE} and {SECRET_VARIABLE}: set the same two "
            "variables for 'openmaker env'"
        )
    variables = client_environment(
        record,
        credentials.access_key_id,
        credentials.secret_access_key,
        settings.region,
        sdk_config=write_sdk_config(settings),
    )
    for name, value in variables.items():
        print(f"export {name}={shlex.quote(value)}")


@app.command("cluster")
def cluster_command() -> None:
    """The nodes of the Ray cluster at RAY_ADDRESS: what each offers, what is free, which
    hosts of which jobs and which instances of which endpoints run there."""
    from openmaker.training.cluster_nodes import (
        ClusterUnreachable,
        cluster_nodes_within,
        instance_label,
    )
    from openmaker.training.ray_cluster import describe_bundle

    try:
        found = cluster_nodes_within(_settings())
    except ClusterUnreachable as exc:
        raise fail(str(exc)) from None
    table = Table(
        "Node",
        "Alive",
        "Offers",
        "Free",
        Column("Hosts", overflow="fold"),
        Column("Instances", overflow="fold"),
    )
    for node in found:
        table.add_row(
            node.address,
            "yes" if node.alive else "no",
            describe_bundle(node.offers).strip("()"),
            describe_bundle(node.free).strip("()") if node.alive else "",
            "\n".join(node.hosts),
            "\n".join(instance_label(i) for i in node.instances),
        )
    console.print(table)


@app.command("console-url")
def console_url() -> None:
    """Print a one-time URL that logs a browser into the running server's web console (it
    works once, within five minutes)."""
    from openmaker.api.console.login_url import LoginUrlError, login_url
    from openmaker.api.credentials import configured_credentials

    settings = _settings()
    record = read_record(settings)
    if record is None:
        raise fail(
            "no openmaker server is running for this OPENMAKER_HOME; start one with "
            "'openmaker server'"
        )
    credentials = configured_credentials(settings)
    server_key = record.access_key_id
    if credentials is None or (server_key and credentials.access_key_id != server_key):
        raise fail(
            "the server's key pair is unknown here: set OPENMAKER_ACCESS_KEY_ID and "
            "OPENMAKER_SECRET_ACCESS_KEY as the server has them"
        )
    try:
        print(login_url(record.api_url, credentials, settings.region))
    except LoginUrlError as exc:
        raise fail(str(exc)) from None


def main() -> None:
    """The command, with a damaged home (a corrupt database) told in one line."""
    try:
        app()
    except HomeError as exc:
        errors.print(f"[red]error:[/red] {escape(str(exc))}")
        raise SystemExit(1) from None
    finally:
        # Python collects its whole heap again on the way out: 0.2-0.3 s once SQLAlchemy and
        # botocore's model are loaded, for nothing (the process ends; atexit still runs).
        gc.freeze()


if __name__ == "__main__":
    main()
