"""Everything one host of one job needs to run, as plain data (it may cross to a Ray actor)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openmaker.host.network import JobNetwork
from openmaker.settings import Settings, StoreSettings


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
    settings: Settings
    # The host's own folder: `ml/` is shown as /opt/ml, `root/` holds the sandbox's writes.
    work_dir: Path
    # Folders the sandbox must not show (openmaker's own state, other jobs).
    hidden_paths: list[Path] = field(default_factory=list)
    # The variables that give the code access to object storage (a server's gate with a key of
    # the job's own, or the S3 server in use; none: the embedded store without a server).
    code_env: dict[str, str] = field(default_factory=dict)
    # None: the whole machine, unconfined.
    resources: HostResources | None = None
    # The job's network (None: the machine's, with loopback addresses; see host/network.py).
    network: JobNetwork | None = None

    @property
    def store(self) -> StoreSettings:
        """How openmaker's own transfers reach object storage."""
        return self.settings.store

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
