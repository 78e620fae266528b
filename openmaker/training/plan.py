"""A CreateTrainingJob request as what its hosts run: the job's hosts and one plan per host.

The only code that reads the request's members for a host (tests/test_host_door.py holds the
hosts to that): the request comes in validated (openmaker/shapes/training.py), and each host
gets typed channels, checkpoint, outputs, command and limits (openmaker/training/host/plan.py),
and the content of the container's config files, rendered here as SageMaker writes them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from openmaker.shapes.distribution import strategy_of
from openmaker.training.host.images import Image, ImageError, resolve_image
from openmaker.training.host.plan import (
    DEFAULT_CHECKPOINT_PATH,
    DEFAULT_VOLUME_GB,
    ChannelPlan,
    CheckpointPlan,
    CommandPlan,
    DataType,
    InputMode,
    LimitsPlan,
    MetricDefinition,
    OutputPlan,
    TrainingPlan,
)

__all__ = ["ImageError", "JobPlan", "TrainingPlan", "image_of", "plan_job"]

# resourceconfig.json's one instance group: openmaker runs homogeneous clusters only.
GROUP_NAME = "homogeneousCluster"


@dataclass(frozen=True)
class JobPlan:
    name: str
    # algo-1 … algo-N, as SageMaker names a job's hosts.
    hosts: tuple[str, ...]
    # What every host runs; host_plan adds each host's own resourceconfig.json.
    plan: TrainingPlan

    def host_plan(self, host: str) -> TrainingPlan:
        files = {**self.plan.config_files, "resourceconfig.json": _json(self._resources(host))}
        return dataclasses.replace(self.plan, config_files=files)

    def _resources(self, host: str) -> dict[str, Any]:
        hosts = sorted(self.hosts)
        instance_type = self.plan.limits.instance_type
        return {
            "current_host": host,
            "current_instance_type": instance_type,
            "current_group_name": GROUP_NAME,
            "hosts": hosts,
            "instance_groups": [
                {"instance_group_name": GROUP_NAME, "instance_type": instance_type, "hosts": hosts}
            ],
            "network_interface_name": "eth0",
        }


def plan_job(request: Mapping[str, Any]) -> JobPlan:
    name = request["TrainingJobName"]
    resources = request["ResourceConfig"]
    count = int(resources.get("InstanceCount", 1))
    algorithm = request["AlgorithmSpecification"]
    channels = [
        _channel(channel, algorithm.get("TrainingInputMode"))
        for channel in request.get("InputDataConfig") or []
    ]
    checkpoint = _checkpoint(request.get("CheckpointConfig"))
    output = request["OutputDataConfig"]
    stopping = request.get("StoppingCondition") or {}
    plan = TrainingPlan(
        command=command_of(request),
        output=OutputPlan(
            prefix=f"{output['S3OutputPath'].rstrip('/')}/{name}/output/",
            compressed=output.get("CompressionType", "GZIP") != "NONE",
        ),
        limits=LimitsPlan(
            instance_type=resources["InstanceType"],
            volume_size_gb=int(resources.get("VolumeSizeInGB") or DEFAULT_VOLUME_GB),
            max_runtime_seconds=stopping.get("MaxRuntimeInSeconds"),
        ),
        channels=tuple(channels),
        checkpoint=checkpoint,
        network_isolation=bool(request.get("EnableNetworkIsolation")),
        config_files=_config_files(request, channels, checkpoint),
    )
    return JobPlan(name, tuple(f"algo-{i}" for i in range(1, count + 1)), plan)


def command_of(request: Mapping[str, Any]) -> CommandPlan:
    algorithm = request["AlgorithmSpecification"]
    hyperparameters = request.get("HyperParameters") or {}
    return CommandPlan(
        image=algorithm["TrainingImage"],
        entrypoint=tuple(algorithm.get("ContainerEntrypoint") or ()),
        arguments=tuple(algorithm.get("ContainerArguments") or ()),
        hyperparameters=dict(hyperparameters),
        environment=dict(request.get("Environment") or {}),
        metric_definitions=tuple(
            MetricDefinition(definition["Name"], definition["Regex"])
            for definition in algorithm.get("MetricDefinitions") or []
        ),
        distribution=strategy_of(hyperparameters),
    )


def image_of(request: Mapping[str, Any]) -> Image:
    """The image the request's hosts would run (ImageError: none could, and why)."""
    return image_for(command_of(request))


def image_for(command: CommandPlan) -> Image:
    return resolve_image(command.image, bool(command.entrypoint), command.hyperparameters)


def _channel(channel: Mapping[str, Any], job_mode: str | None) -> ChannelPlan:
    source = channel["DataSource"]["S3DataSource"]
    seed = (channel.get("ShuffleConfig") or {}).get("Seed")
    return ChannelPlan(
        name=channel["ChannelName"],
        # A channel's own InputMode overrides the job's TrainingInputMode.
        mode=InputMode(str(channel.get("InputMode") or job_mode)),
        uri=source["S3Uri"],
        data_type=DataType(source["S3DataType"]),
        attribute_names=tuple(source.get("AttributeNames") or ()),
        sharded=source.get("S3DataDistributionType") == "ShardedByS3Key",
        gzip=channel.get("CompressionType") == "Gzip",
        recordio=channel.get("RecordWrapperType") == "RecordIO",
        content_type=channel.get("ContentType"),
        shuffle_seed=None if seed is None else int(seed),
    )


def _checkpoint(config: Mapping[str, Any] | None) -> CheckpointPlan | None:
    if not config:
        return None
    return CheckpointPlan(config["S3Uri"], config.get("LocalPath") or DEFAULT_CHECKPOINT_PATH)


def _config_files(
    request: Mapping[str, Any], channels: list[ChannelPlan], checkpoint: CheckpointPlan | None
) -> dict[str, str]:
    """The files of /opt/ml/input/config every host gets (CONTRACT.md §1)."""
    files = {
        "hyperparameters.json": _json(request.get("HyperParameters") or {}),
        "inputdataconfig.json": _json(_input_data_config(request, channels)),
    }
    if checkpoint is not None:
        files["checkpointconfig.json"] = _json({"LocalPath": checkpoint.local_path})
    return files


def _input_data_config(
    request: Mapping[str, Any], channels: list[ChannelPlan]
) -> dict[str, dict[str, str]]:
    config: dict[str, dict[str, str]] = {}
    for channel, plan in zip(request.get("InputDataConfig") or [], channels, strict=True):
        source = channel["DataSource"].get("S3DataSource", {})
        entry: dict[str, str] = {}
        if channel.get("ContentType"):
            entry["ContentType"] = channel["ContentType"]
        entry["TrainingInputMode"] = plan.mode.value
        # The file says S3DistributionType where the API says S3DataDistributionType.
        entry["S3DistributionType"] = source.get("S3DataDistributionType", "FullyReplicated")
        entry["RecordWrapperType"] = channel.get("RecordWrapperType", "None")
        if channel.get("CompressionType", "None") != "None":
            entry["CompressionType"] = channel["CompressionType"]
        config[plan.name] = entry
    return config


def _json(data: object) -> str:
    return json.dumps(data, indent=2) + "\n"
