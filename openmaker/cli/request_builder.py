"""Building a CreateTrainingJob request from the command line's flags, as the SDK would."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openmaker.settings import Settings
from openmaker.shapes.defaults import default_stopping_condition

DEFAULT_INSTANCE_TYPE = "ml.m5.large"
DEFAULT_MAX_RUN = default_stopping_condition()["MaxRuntimeInSeconds"]


def default_bucket(settings: Settings) -> str:
    """The bucket the sagemaker SDK would pick: `sagemaker-<region>-<account>`."""
    return f"sagemaker-{settings.region}-{settings.account_id}"


def as_uri(value: str) -> str:
    """Local paths become file:// URIs; URIs are kept as they are."""
    if "://" in value:
        return value
    return Path(value).expanduser().absolute().as_uri()


@dataclass
class TrainFlags:
    job_name: str | None = None
    base_job_name: str = "openmaker"
    image: str | None = None
    entry_point: str | None = None
    source_dir: Path | None = None
    inputs: dict[str, str] = field(default_factory=dict)
    hyperparameters: dict[str, str] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    output: str | None = None
    checkpoint: str | None = None
    instance_type: str = DEFAULT_INSTANCE_TYPE
    instance_count: int = 1
    max_run: int = DEFAULT_MAX_RUN
    role: str | None = None


def build_request(flags: TrainFlags, settings: Settings) -> dict[str, Any]:
    # Here, not at the top: `openmaker train --request` (and every other command) needs none.
    from openmaker.shapes.names import unique_name
    from openmaker.training.host.images import SCRIPT_MODE_IMAGE

    base = flags.base_job_name
    if flags.entry_point and base == "openmaker":
        base = Path(flags.entry_point).stem.replace("_", "-")
    name = flags.job_name or unique_name(base)
    output = as_uri(flags.output) if flags.output else f"s3://{default_bucket(settings)}/"
    hyperparameters = dict(flags.hyperparameters)
    image = flags.image
    if flags.entry_point:
        image = image or SCRIPT_MODE_IMAGE
        folder, program = script_location(flags.entry_point, flags.source_dir)
        source = upload_source(folder, name, output, settings)
        # The SDK sends these JSON-encoded; the toolkit decodes them.
        hyperparameters.update(
            {
                "sagemaker_program": json.dumps(program),
                "sagemaker_submit_directory": json.dumps(source),
                "sagemaker_container_log_level": "20",
                "sagemaker_job_name": json.dumps(name),
                "sagemaker_region": json.dumps(settings.region),
            }
        )
    if not image:
        raise ValueError("give --image, or --entry-point (and --source-dir) for script mode")
    request: dict[str, Any] = {
        "TrainingJobName": name,
        "RoleArn": flags.role or f"arn:aws:iam::{settings.account_id}:role/openmaker",
        "AlgorithmSpecification": {
            "TrainingImage": image if "://" in image else as_uri_image(image),
            "TrainingInputMode": "File",
        },
        "HyperParameters": hyperparameters,
        "InputDataConfig": [
            {
                "ChannelName": channel,
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": as_uri(uri),
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
            }
            for channel, uri in flags.inputs.items()
        ],
        "OutputDataConfig": {"S3OutputPath": output},
        "ResourceConfig": {
            "InstanceType": flags.instance_type,
            "InstanceCount": flags.instance_count,
            "VolumeSizeInGB": 30,
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": flags.max_run},
    }
    if not request["InputDataConfig"]:
        del request["InputDataConfig"]
    if not hyperparameters:
        del request["HyperParameters"]
    if flags.environment:
        request["Environment"] = dict(flags.environment)
    if flags.checkpoint:
        request["CheckpointConfig"] = {"S3Uri": as_uri(flags.checkpoint)}
    return request


def as_uri_image(image: str) -> str:
    """A local image folder is named by its absolute path; registry names stay as typed."""
    path = Path(image).expanduser()
    return str(path.absolute()) if path.exists() else image


def script_location(entry_point: str, source_dir: Path | None) -> tuple[Path, str]:
    """The folder to pack and the program's name inside it (SDK rules: without a source
    folder, the entry point's own folder is packed)."""
    if source_dir is None:
        path = Path(entry_point)
        folder, program = path.parent, path.name
    else:
        folder, program = source_dir, entry_point
    if not (folder / program).is_file():
        raise ValueError(f"entry point {program} not found in {folder.absolute()}")
    return folder, program


def upload_source(folder: Path, name: str, output: str, settings: Settings) -> str:
    """Pack the source folder as sourcedir.tar.gz beside the job's outputs, as the SDK does."""
    import asyncio
    import tempfile

    from openmaker.store import resolve, upload_file
    from openmaker.training.host.outputs import pack

    uri = f"{output.rstrip('/')}/{name}/source/sourcedir.tar.gz"
    with tempfile.TemporaryDirectory() as staging:
        archive = Path(staging) / "sourcedir.tar.gz"
        pack([folder], archive)
        asyncio.run(upload_file(archive, resolve(uri, settings.store)))
    return uri


def load_request(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return data
