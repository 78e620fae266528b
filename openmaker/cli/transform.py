"""`openmaker transform`: run a batch transform job from a CreateTransformJob request file or
from flags, following it to its end; `openmaker transform list / describe / stop / logs`."""

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

TRANSFORM = Kind("Transform", "/aws/sagemaker/TransformJobs", "transform job", "transform")
transform_app = typer.Typer(
    help="Run batch transform jobs (a model's containers over S3 objects); list, describe, "
    "stop them, print their logs.",
)


@transform_app.callback(invoke_without_command=True)
def transform(
    context: typer.Context,
    request_file: Annotated[
        Path | None, typer.Option("--request", help="A CreateTransformJob request as JSON.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="ModelName.")] = None,
    input_uri: Annotated[
        str | None, typer.Option("--input", help="The input: an S3 prefix (S3Prefix).")
    ] = None,
    output: Annotated[str | None, typer.Option(help="S3OutputPath.")] = None,
    content_type: Annotated[str | None, typer.Option(help="ContentType, e.g. text/csv.")] = None,
    accept: Annotated[str | None, typer.Option(help="Accept.")] = None,
    split_type: Annotated[str, typer.Option(help="None, Line, RecordIO, TFRecord.")] = "None",
    strategy: Annotated[
        str | None, typer.Option(help="BatchStrategy: SingleRecord or MultiRecord.")
    ] = None,
    assemble_with: Annotated[str | None, typer.Option(help="AssembleWith: Line or None.")] = None,
    max_payload: Annotated[int | None, typer.Option(help="MaxPayloadInMB.")] = None,
    max_concurrent: Annotated[
        int | None, typer.Option(help="MaxConcurrentTransforms (per instance).")
    ] = None,
    instance_type: Annotated[str, typer.Option()] = "ml.m5.large",
    instance_count: Annotated[int, typer.Option()] = 1,
    job_name: Annotated[str | None, typer.Option(help="Default: a unique name.")] = None,
    wait: Annotated[bool, typer.Option(help="Follow the job until it ends.")] = True,
) -> None:
    """Run a batch transform job, from a full request or from flags."""
    if context.invoked_subcommand is not None:
        return
    if request_file is not None:
        request = load_request(request_file)
    elif model and input_uri and output:
        request = {
            "TransformJobName": job_name or unique_name("transform"),
            "ModelName": model,
            "TransformInput": {
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": input_uri}},
                "SplitType": split_type,
            },
            "TransformOutput": {"S3OutputPath": output},
            "TransformResources": {"InstanceType": instance_type, "InstanceCount": instance_count},
        }
        optional: dict[str, tuple[dict[str, Any], str, Any]] = {
            "content": (request["TransformInput"], "ContentType", content_type),
            "accept": (request["TransformOutput"], "Accept", accept),
            "assemble": (request["TransformOutput"], "AssembleWith", assemble_with),
            "strategy": (request, "BatchStrategy", strategy),
            "payload": (request, "MaxPayloadInMB", max_payload),
            "concurrent": (request, "MaxConcurrentTransforms", max_concurrent),
        }
        for target, key, value in optional.values():
            if value is not None:
                target[key] = value
    else:
        raise fail("give --request FILE, or --model, --input and --output")
    submit(KindJobs(settings_or_exit(), TRANSFORM, submitting=True), request, wait)


add_commands(transform_app, TRANSFORM)
