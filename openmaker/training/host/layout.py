"""The `/opt/ml` tree of one host and the config files in it (CONTRACT.md §1)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from openmaker.training.host.spec import HostSpec

CONTAINER_ROOT = "/opt/ml"
DEFAULT_CHECKPOINT_PATH = "/opt/ml/checkpoints"
GROUP_NAME = "homogeneousCluster"


def create_tree(spec: HostSpec) -> None:
    ml = spec.ml_dir
    for sub in ("input/config", "input/data", "model", "output/data", "code"):
        (ml / sub).mkdir(parents=True, exist_ok=True)
    config = ml / "input/config"
    _write_json(config / "hyperparameters.json", spec.request.get("HyperParameters") or {})
    _write_json(config / "inputdataconfig.json", input_data_config(spec))
    _write_json(config / "resourceconfig.json", resource_config(spec))
    checkpoint = spec.request.get("CheckpointConfig")
    if checkpoint:
        _write_json(config / "checkpointconfig.json", {"LocalPath": checkpoint_local_path(spec)})


def checkpoint_local_path(spec: HostSpec) -> str:
    checkpoint = spec.request.get("CheckpointConfig") or {}
    return str(checkpoint.get("LocalPath") or DEFAULT_CHECKPOINT_PATH)


def input_data_config(spec: HostSpec) -> dict[str, dict[str, str]]:
    config: dict[str, dict[str, str]] = {}
    for channel in spec.request.get("InputDataConfig") or []:
        source = channel["DataSource"].get("S3DataSource", {})
        entry: dict[str, str] = {}
        if channel.get("ContentType"):
            entry["ContentType"] = channel["ContentType"]
        entry["TrainingInputMode"] = spec.input_mode(channel)
        # The file says S3DistributionType where the API says S3DataDistributionType.
        entry["S3DistributionType"] = source.get("S3DataDistributionType", "FullyReplicated")
        entry["RecordWrapperType"] = channel.get("RecordWrapperType", "None")
        if channel.get("CompressionType", "None") != "None":
            entry["CompressionType"] = channel["CompressionType"]
        config[channel["ChannelName"]] = entry
    return config


def resource_config(spec: HostSpec) -> dict[str, Any]:
    hosts = sorted(spec.hosts)
    return {
        "current_host": spec.host_name,
        "current_instance_type": spec.instance_type,
        "current_group_name": GROUP_NAME,
        "hosts": hosts,
        "instance_groups": [
            {
                "instance_group_name": GROUP_NAME,
                "instance_type": spec.instance_type,
                "hosts": hosts,
            }
        ],
        "network_interface_name": "eth0",
    }


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
