"""A CreateProcessingJob request as what its hosts run: the training host's typed plan
(openmaker/training/host/plan.py) with the inputs at their LocalPath, the config files in
/opt/ml/config, `/opt/ml/output/message` as the failure file, the outputs as the folders each
host uploads.

The only code that reads the request's members for a host: it comes in validated
(openmaker/processing/checks.py).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from openmaker.training.host.plan import (
    DEFAULT_VOLUME_GB,
    ChannelPlan,
    CommandPlan,
    DataType,
    FolderUpload,
    InputMode,
    LimitsPlan,
    OutputPlan,
    TrainingPlan,
)

CONTAINER_ROOT = "/opt/ml"
# Where SageMaker writes the request and the cluster for the container.
CONFIG_DIR = "config"
# Its first 1 KB becomes the job's ExitMessage (and the FailureReason of a failed job).
MESSAGE_FILE = "output/message"


@dataclass(frozen=True)
class ProcessingPlan:
    name: str
    arn: str
    hosts: tuple[str, ...]
    # What every host runs; host_plan adds each host's own resourceconfig.json.
    plan: TrainingPlan

    def host_plan(self, host: str) -> TrainingPlan:
        resources = {"current_host": host, "hosts": sorted(self.hosts)}
        files = {**self.plan.config_files, "resourceconfig.json": _json(resources)}
        return dataclasses.replace(self.plan, config_files=files)


def relative(local_path: str) -> str:
    """A LocalPath under /opt/ml, relative to it."""
    return local_path.removeprefix(CONTAINER_ROOT + "/").strip("/")


def plan_processing(request: Mapping[str, Any], arn: str) -> ProcessingPlan:
    name = request["ProcessingJobName"]
    cluster = request["ProcessingResources"]["ClusterConfig"]
    app = request["AppSpecification"]
    stopping = request.get("StoppingCondition") or {}
    outputs = tuple(
        FolderUpload(
            name=output["OutputName"],
            folder=relative(output["S3Output"]["LocalPath"]),
            uri=output["S3Output"]["S3Uri"],
            continuous=output["S3Output"].get("S3UploadMode") == "Continuous",
        )
        for output in (request.get("ProcessingOutputConfig") or {}).get("Outputs") or []
    )
    plan = TrainingPlan(
        command=CommandPlan(
            image=app["ImageUri"],
            entrypoint=tuple(app.get("ContainerEntrypoint") or ()),
            arguments=tuple(app.get("ContainerArguments") or ()),
            environment=dict(request.get("Environment") or {}),
            verb=None,  # without ContainerEntrypoint: the image's ENTRYPOINT and CMD
        ),
        # A processing job has no model archive: its outputs are its folders (outputs.py).
        output=OutputPlan(prefix=""),
        limits=LimitsPlan(
            instance_type=cluster["InstanceType"],
            volume_size_gb=int(cluster.get("VolumeSizeInGB") or DEFAULT_VOLUME_GB),
            max_runtime_seconds=stopping.get("MaxRuntimeInSeconds"),
        ),
        channels=tuple(_input(item) for item in request.get("ProcessingInputs") or []),
        network_isolation=bool((request.get("NetworkConfig") or {}).get("EnableNetworkIsolation")),
        config_files={"processingjobconfig.json": _json(job_config(request, arn))},
        config_dir=CONFIG_DIR,
        failure_file=MESSAGE_FILE,
        folders=tuple(output.folder for output in outputs),
        program="processing program",
        uploads=outputs,
    )
    count = int(cluster["InstanceCount"])
    return ProcessingPlan(name, arn, tuple(f"algo-{i}" for i in range(1, count + 1)), plan)


def _input(item: Mapping[str, Any]) -> ChannelPlan:
    source = item["S3Input"]
    return ChannelPlan(
        name=item["InputName"],
        mode=InputMode(source.get("S3InputMode") or "File"),
        uri=source["S3Uri"],
        data_type=DataType(source["S3DataType"]),
        sharded=source.get("S3DataDistributionType") == "ShardedByS3Key",
        gzip=source.get("S3CompressionType") == "Gzip",
        local_path=source["LocalPath"],
    )


def job_config(request: Mapping[str, Any], arn: str) -> dict[str, Any]:
    """/opt/ml/config/processingjobconfig.json: the request as SageMaker writes it for the
    container (its inputs say `S3DownloadMode: StartOfJob`), Tags left out."""
    config: dict[str, Any] = {"ProcessingJobArn": arn}
    config.update({key: value for key, value in request.items() if key != "Tags"})
    app = dict(request["AppSpecification"])
    app.setdefault("ContainerEntrypoint", None)
    app.setdefault("ContainerArguments", None)
    config["AppSpecification"] = app
    config.setdefault("Environment", {})
    inputs = []
    for item in request.get("ProcessingInputs") or []:
        source = {
            "S3DataDistributionType": "FullyReplicated",
            "S3InputMode": "File",
            "S3CompressionType": "None",
            **item["S3Input"],
            "S3DownloadMode": "StartOfJob",
        }
        inputs.append({**item, "S3Input": source})
    config["ProcessingInputs"] = inputs
    if "ProcessingOutputConfig" in request:
        outputs = request["ProcessingOutputConfig"]
        config["ProcessingOutputConfig"] = {"KmsKeyId": None, **outputs}
    return config


def _json(data: object) -> str:
    return json.dumps(data, indent=2) + "\n"
