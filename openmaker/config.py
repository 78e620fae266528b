"""Where openmaker keeps its state and which account and region it speaks for."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

# Processes and threads per host: room for data loaders and their threads on a large
# instance, not for a fork bomb.
DEFAULT_PIDS_LIMIT = 4096


@dataclass(frozen=True)
class Settings:
    home: Path
    region: str
    account_id: str
    # How jobs share this machine (see openmaker/jobs/capacity.py): "shared" or "strict".
    capacity: str = "shared"
    # What the machine offers to jobs, when it must not be detected (tests, a machine shared
    # with other work): logical CPUs, memory in GiB, GPUs.
    cpus: int | None = None
    memory_gib: float | None = None
    gpus: int | None = None
    # The folders under which requests through the API may name local paths (file:// URIs,
    # local image folders): the machine owner's to grant; none by default.
    file_roots: tuple[Path, ...] = ()
    # The most log bytes (with the metric values found in them) one job may store; later output
    # is read and dropped. OPENMAKER_LOG_LIMIT_MB, see README "Logs".
    log_limit_bytes: int = 1024 * 1024 * 1024
    # The most processes and threads one host may have at once (None: no limit).
    # OPENMAKER_PIDS_LIMIT, a number or `max`.
    pids_limit: int | None = DEFAULT_PIDS_LIMIT

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.home / 'openmaker.db'}"

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    @property
    def embedded_s3_dir(self) -> Path:
        """The folder that `s3://bucket/key` maps onto when no S3 endpoint is configured."""
        return self.home / "s3"


def load_settings() -> Settings:
    home = Path(os.environ.get("OPENMAKER_HOME") or Path.home() / ".openmaker").absolute()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    # SageMaker ARNs need a 12-digit account; openmaker has none, so it uses a fixed one.
    account_id = os.environ.get("OPENMAKER_ACCOUNT_ID", "000000000000")
    return Settings(
        home=home,
        region=region,
        account_id=account_id,
        capacity=_choice("OPENMAKER_CAPACITY", ("shared", "strict")),
        cpus=_number("OPENMAKER_CPUS", int),
        memory_gib=_number("OPENMAKER_MEMORY_GIB", float),
        gpus=_number("OPENMAKER_GPUS", int),
        file_roots=_folders("OPENMAKER_FILE_ROOTS"),
        log_limit_bytes=_megabytes("OPENMAKER_LOG_LIMIT_MB", 1024),
        pids_limit=_limit("OPENMAKER_PIDS_LIMIT", DEFAULT_PIDS_LIMIT),
    )


_N = TypeVar("_N", int, float)


def _folders(name: str) -> tuple[Path, ...]:
    """Absolute folders separated by `:`; empty parts are skipped."""
    parts = [part for part in os.environ.get(name, "").split(":") if part]
    relative = [part for part in parts if not part.startswith("/")]
    if relative:
        raise ValueError(f"{name} must list absolute folders separated by ':', not {relative[0]!r}")
    return tuple(Path(part) for part in parts)


def _choice(name: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name) or choices[0]
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def _limit(name: str, default: int) -> int | None:
    """A count of at least 1, or `max` for none."""
    if os.environ.get(name, "").strip() == "max":
        return None
    value = _number(name, int)
    if value == 0:
        raise ValueError(f"{name} must be at least 1 (or max), not 0")
    return default if value is None else value


def _megabytes(name: str, default: float) -> int:
    value = _number(name, float)
    return int((default if value is None else value) * 1024 * 1024)


def _number(name: str, kind: type[_N]) -> _N | None:
    text = os.environ.get(name)
    if not text:
        return None
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"{name} must be a number, not {text!r}") from None
    if value < 0:
        raise ValueError(f"{name} must not be negative, not {text!r}")
    return value
