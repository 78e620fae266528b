"""Everything one host of one job needs to run, as plain data (it may cross to a Ray actor).

A spec holds no database URL and no live handle: it pickles, and `to_json` / `from_json`
carry it through JSON.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openmaker.host.network import JobNetwork

# SageMaker gives a stopped container 120 s between SIGTERM and SIGKILL.
DEFAULT_GRACE_SECONDS = 120.0


@dataclass(frozen=True)
class HostSettings:
    """What a host takes from openmaker's settings: its home (the paths below it), limits,
    the stop grace period. Nothing else of `Settings` crosses to a host."""

    home: Path
    # The most processes and threads the host may have at once (None: no limit).
    pids_limit: int | None = None
    # Between SIGTERM and SIGKILL when the host's code is stopped.
    grace_seconds: float = DEFAULT_GRACE_SECONDS
    # Keep the host's folder when it ends (OPENMAKER_KEEP_JOB_FILES=1), for a post-mortem.
    keep_files: bool = False

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    @property
    def embedded_s3_dir(self) -> Path:
        """The folder that `s3://bucket/key` maps onto when no S3 endpoint is configured."""
        return self.home / "s3"


@dataclass(frozen=True)
class HostResources:
    """The share of the machine one host gets (see openmaker/jobs/capacity.py)."""

    cpus: tuple[int, ...]  # the CPUs it may run on
    memory: int | None  # bytes; None: no limit
    gpus: tuple[str, ...]  # CUDA_VISIBLE_DEVICES


@dataclass(frozen=True)
class HostSpec:
    job_name: str
    job_arn: str
    request: dict[str, Any]
    host_name: str
    hosts: list[str]
    region: str
    settings: HostSettings
    # The host's own folder: `ml/` is shown as /opt/ml, `root/` holds the sandbox's writes.
    work_dir: Path
    # Folders the sandbox must not show (openmaker's own state, other jobs).
    hidden_paths: list[Path] = field(default_factory=list)
    # Variables that give openmaker's own transfers access to object storage (none: the
    # embedded store, on this machine's disk).
    store_env: dict[str, str] = field(default_factory=dict)
    # The same for the code: the embedded store is reached through a server's S3 endpoint.
    code_env: dict[str, str] = field(default_factory=dict)
    # None: the whole machine, unconfined.
    resources: HostResources | None = None
    # The job's network (None: the machine's, with loopback addresses; see host/network.py).
    network: JobNetwork | None = None

    @property
    def ml_dir(self) -> Path:
        return self.work_dir / "ml"

    @property
    def host_index(self) -> int:
        return self.hosts.index(self.host_name)

    @property
    def instance_type(self) -> str:
        return str(self.request["ResourceConfig"]["InstanceType"])

    def input_mode(self, channel: dict[str, Any]) -> str:
        """A channel's own InputMode overrides the job's TrainingInputMode."""
        default = self.request["AlgorithmSpecification"]["TrainingInputMode"]
        return str(channel.get("InputMode") or default)

    def to_json(self) -> dict[str, Any]:
        """The spec as JSON-ready data (paths as strings, tuples as lists)."""
        data = dataclasses.asdict(self)
        data["settings"]["home"] = str(self.settings.home)
        data["work_dir"] = str(self.work_dir)
        data["hidden_paths"] = [str(path) for path in self.hidden_paths]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HostSpec:
        settings = dict(data["settings"], home=Path(data["settings"]["home"]))
        resources = data.get("resources")
        network = data.get("network")
        return cls(
            **{
                **data,
                "settings": HostSettings(**settings),
                "work_dir": Path(data["work_dir"]),
                "hidden_paths": [Path(path) for path in data.get("hidden_paths", [])],
                "resources": None
                if resources is None
                else HostResources(
                    tuple(resources["cpus"]), resources["memory"], tuple(resources["gpus"])
                ),
                "network": None
                if network is None
                else JobNetwork(
                    **dict(network, relays=[(port, to) for port, to in network["relays"]])
                ),
            }
        )
