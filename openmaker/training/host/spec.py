"""Everything one host of one job needs to run, as plain data (it may cross to a Ray actor).

A spec holds no database URL and no live handle: it pickles, and `to_json` / `from_json`
carry it through JSON.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from openmaker.runtime.network import JobNetwork
from openmaker.settings import (
    DEFAULT_GRACE_SECONDS,
    DEFAULT_HIDDEN,
    DEFAULT_PIDS_LIMIT,
    EcrEndpoint,
    S3Endpoint,
    Settings,
    StoreSettings,
)
from openmaker.training.host.plan import TrainingPlan


@dataclass(frozen=True)
class HostSettings:
    """What a host takes from openmaker's settings: its home (the paths below it), how it
    reaches the store, its limits, its sandbox, the stop grace period. Nothing else of
    `Settings` (the database's URL, the server's key pair) crosses to a host."""

    home: Path
    store: StoreSettings
    # The most processes and threads the host may have at once (None: no limit).
    pids_limit: int | None = DEFAULT_PIDS_LIMIT
    # False: the code runs as a plain process (OPENMAKER_SANDBOX=none).
    sandbox: bool = True
    # What the sandbox shows empty: paths or glob patterns.
    sandbox_hide: tuple[str, ...] = DEFAULT_HIDDEN
    # Between SIGTERM and SIGKILL when the host's code is stopped.
    grace_seconds: float = DEFAULT_GRACE_SECONDS
    # Keep the host's folder when it ends, for a post-mortem.
    keep_files: bool = False
    # How the host reaches registries to pull its image (runtime/images/).
    registry_auth_file: Path | None = None
    insecure_registries: tuple[str, ...] = ()
    registries_conf: Path | None = None
    ecr: EcrEndpoint = field(default_factory=EcrEndpoint)
    # "pull": a framework image is pulled and run as it is when it can be; "local": never.
    framework_images: str = "pull"

    @classmethod
    def of(cls, settings: Settings) -> HostSettings:
        return cls(
            home=settings.home,
            store=settings.store,
            pids_limit=settings.pids_limit,
            sandbox=settings.sandbox,
            sandbox_hide=settings.sandbox_hide,
            grace_seconds=settings.stop_grace_seconds,
            keep_files=settings.keep_job_files,
            registry_auth_file=settings.registry_auth_file,
            insecure_registries=settings.insecure_registries,
            registries_conf=settings.registries_conf,
            ecr=settings.ecr,
            framework_images=settings.framework_images,
        )

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"


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
    # What the job asks of this host (built from the request by openmaker/training/plan.py).
    plan: TrainingPlan
    host_name: str
    hosts: list[str]
    region: str
    settings: HostSettings
    # The host's own folder: `ml/` is shown as /opt/ml, `root/` holds the sandbox's writes.
    work_dir: Path
    # Folders the sandbox must not show (openmaker's own state, other jobs).
    hidden_paths: list[Path] = field(default_factory=list)
    # The variables that give the code access to object storage (a server's gate with a key of
    # the job's own, or the S3 server in use; none: the embedded store without a server).
    code_env: dict[str, str] = field(default_factory=dict)
    # None: the whole machine, unconfined.
    resources: HostResources | None = None
    # The job's network (None: the machine's, with loopback addresses; see network.py).
    network: JobNetwork | None = None
    # The job's key on this machine (ResourceKind.local_key: its cgroups'); None: its name, as
    # a training job's is.
    job_key: str | None = None

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
        return self.plan.limits.instance_type

    def to_json(self) -> dict[str, Any]:
        """The spec as JSON values (for a host on another machine)."""
        plain = _plain(dataclasses.asdict(self))
        assert isinstance(plain, dict)
        return plain

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HostSpec:
        """The spec `to_json` wrote."""
        settings, store = data["settings"], data["settings"]["store"]
        endpoint, resources, network = store["endpoint"], data["resources"], data["network"]
        return cls(
            **{
                **data,
                "plan": TrainingPlan.from_json(data["plan"]),
                "settings": HostSettings(
                    **{
                        **settings,
                        "home": Path(settings["home"]),
                        "sandbox_hide": tuple(settings["sandbox_hide"]),
                        "registry_auth_file": settings["registry_auth_file"]
                        and Path(settings["registry_auth_file"]),
                        "insecure_registries": tuple(settings["insecure_registries"]),
                        "registries_conf": settings.get("registries_conf")
                        and Path(settings["registries_conf"]),
                        "ecr": EcrEndpoint(**settings.get("ecr", {})),
                        "store": StoreSettings(
                            **{
                                **store,
                                "embedded_dir": Path(store["embedded_dir"]),
                                "endpoint": endpoint and S3Endpoint(**endpoint),
                            }
                        ),
                    }
                ),
                "work_dir": Path(data["work_dir"]),
                "hidden_paths": [Path(path) for path in data["hidden_paths"]],
                "resources": resources
                and HostResources(
                    tuple(resources["cpus"]), resources["memory"], tuple(resources["gpus"])
                ),
                "network": network
                and JobNetwork(**{**network, "relays": [tuple(r) for r in network["relays"]]}),
            }
        )


def _plain(value: object) -> object:
    """`value` (dataclasses.asdict's) with paths as strings, tuples as lists, enums as values."""
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value
