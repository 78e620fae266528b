"""`openmaker process`: run a processing job from a CreateProcessingJob request file or from
flags, following it to its end; `openmaker process list / describe / stop / logs`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from openmaker.cli.kind_jobs import (
    Kind,
    KindJobs,
    add_commands,
    load_request,
    settings_or_exit,
    submit,
    unique_name,
)
from openmaker.cli.output import fail

PROCESSING = Kind("Processing", "/aws/sagemaker/ProcessingJobs", "processing job", "process")
process_app = typer.Typer(
    help="Run processing jobs (a script over S3 inputs to S3 outputs); list, describe, stop "
    "them, print their logs.",
)
DEFAULT_ROLE = "arn:aws:iam::000000000000:role/openmaker"


def _pairs(values: list[str], flag: str) -> list[tuple[str, str]]:
    found = []
    for value in values:
        left, sep, right = value.partition("=")
        if not sep or not left or not right:
            raise typer.BadParameter(f"expected LOCAL_PATH=S3_URI, got {value!r}", param_hint=flag)
        found.append((left, right))
    return found


@process_app.callback(invoke_without_command=True)
def process(
    context: typer.Context,
    request_file: Annotated[
        Path | None, typer.Option("--request", help="A CreateProcessingJob request as JSON.")
    ] = None,
    image: Annotated[str | None, typer.Option(help="AppSpecification.ImageUri.")] = None,
    entrypoint: Annotated[
        list[str], typer.Option(help="ContainerEntrypoint, one word each (repeatable).")
    ] = [],  # noqa: B006 - typer reads the default, never mutates it
    argument: Annotated[
        list[str], typer.Option(help="ContainerArguments, one each (repeatable).")
    ] = [],  # noqa: B006
    inputs: Annotated[
        list[str], typer.Option("--input", help="LOCAL_PATH=S3_URI: an input (repeatable).")
    ] = [],  # noqa: B006
    outputs: Annotated[
        list[str], typer.Option("--output", help="LOCAL_PATH=S3_URI: an output (repeatable).")
    ] = [],  # noqa: B006
    environment: Annotated[
        list[str], typer.Option(help="KEY=VALUE for the code (repeatable).")
    ] = [],  # noqa: B006
    instance_type: Annotated[str, typer.Option()] = "ml.m5.large",
    instance_count: Annotated[int, typer.Option()] = 1,
    max_run: Annotated[int, typer.Option(help="MaxRuntimeInSeconds.")] = 86400,
    job_name: Annotated[str | None, typer.Option(help="Default: a unique name.")] = None,
    role: Annotated[str, typer.Option(help="RoleArn (recorded, not used).")] = DEFAULT_ROLE,
    wait: Annotated[bool, typer.Option(help="Follow the job until it ends.")] = True,
) -> None:
    """Run a processing job, from a full request or from flags."""
    if context.invoked_subcommand is not None:
        return
    if request_file is not None:
        request = load_request(request_file)
    elif image and entrypoint:
        request = {
            "ProcessingJobName": job_name or unique_name("process"),
            "RoleArn": role,
            "AppSpecification": {"ImageUri": image, "ContainerEntrypoint": entrypoint},
            "ProcessingResources": {
                "ClusterConfig": {
                    "InstanceType": instance_type,
                    "InstanceCount": instance_count,
                    "VolumeSizeInGB": 30,
                }
            },
            "StoppingCondition": {"MaxRuntimeInSeconds": max_run},
            "ProcessingInputs": [
                _input(index, local, uri)
                for index, (local, uri) in enumerate(_pairs(inputs, "--input"), 1)
            ],
        }
        if argument:
            request["AppSpecification"]["ContainerArguments"] = argument
        if environment:
            request["Environment"] = dict(
                (key, value) for key, value in (e.partition("=")[::2] for e in environment)
            )
        if outputs:
            request["ProcessingOutputConfig"] = {
                "Outputs": [
                    {
                        "OutputName": f"output-{index}",
                        "S3Output": {"S3Uri": uri, "LocalPath": local, "S3UploadMode": "EndOfJob"},
                    }
                    for index, (local, uri) in enumerate(_pairs(outputs, "--output"), 1)
                ]
            }
    else:
        raise fail("give --request FILE, or --image and --entrypoint")
    submit(KindJobs(settings_or_exit(), PROCESSING, submitting=True), request, wait)


def _input(index: int, local: str, uri: str) -> dict[str, Any]:
    source = {"S3Uri": uri, "LocalPath": local, "S3DataType": "S3Prefix", "S3InputMode": "File"}
    return {"InputName": f"input-{index}", "S3Input": source}


add_commands(process_app, PROCESSING)
