"""Serverless variants (`ProductionVariants[].ServerlessConfig`): an instance only while there
are invocations.

- CreateEndpointConfig checks the config as SageMaker does (`check`).
- The endpoint's worker starts a serverless variant with no instance (one if it has
  `ProvisionedConcurrency`, kept warm). The invocation proxy marks each invocation of the
  variant on a demand file (`demand_file`, its modification time); the worker starts one
  instance when it finds the variant asked for and without one (the cold start), and stops it
  once the file is older than `OPENMAKER_SERVERLESS_IDLE_SECONDS` (serving/worker.py).
- The proxy holds an invocation that finds no instance until one answers /ping (the time it
  waited is the `ModelSetupTime` metric), and refuses one over `MaxConcurrency` invocations of
  the variant under way with a `ThrottlingException` (429), as SageMaker does (`Gate`).
- The instance's memory is `MemorySizeInMB`; it is placed as a `PLACEMENT_TYPE` for its CPUs.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from openmaker.settings import Settings
from openmaker.shapes.errors import ValidationException

MEMORY_SIZES = (1024, 2048, 3072, 4096, 5120, 6144)
MAX_CONCURRENCY = 200
# What a serverless instance is placed as on this machine, for its CPUs (its memory is its own).
PLACEMENT_TYPE = "ml.t3.medium"
MIB = 1024 * 1024
CONFIG = "ServerlessConfig"


class Throttled(Exception):
    """More invocations under way than the variant's MaxConcurrency."""


def config_of(variant: dict[str, Any]) -> dict[str, Any] | None:
    """A production variant's ServerlessConfig (None: it runs on instances)."""
    found = variant.get(CONFIG)
    return found if isinstance(found, dict) else None


def check(member: str, variant: dict[str, Any]) -> None:
    """Refuse a serverless variant SageMaker would refuse, naming the member."""
    config = config_of(variant)
    assert config is not None
    for other in ("InstanceType", "InitialInstanceCount", "VolumeSizeInGB"):
        if variant.get(other) is not None:
            raise ValidationException(
                f"{member}.{other}: a variant with a ServerlessConfig has no {other}; give "
                "one or the other"
            )
    memory = config.get("MemorySizeInMB")
    if memory not in MEMORY_SIZES:
        raise ValidationException(
            f"{member}.{CONFIG}.MemorySizeInMB: {memory} is not a memory size for a serverless "
            f"endpoint; valid values are {', '.join(str(m) for m in MEMORY_SIZES)}"
        )
    _check_concurrency(f"{member}.{CONFIG}", config)


def _check_concurrency(member: str, config: dict[str, Any]) -> None:
    most = config.get("MaxConcurrency")
    if not isinstance(most, int) or not 1 <= most <= MAX_CONCURRENCY:
        raise ValidationException(
            f"{member}.MaxConcurrency: {most} is not between 1 and {MAX_CONCURRENCY}"
        )
    provisioned = config.get("ProvisionedConcurrency")
    if provisioned is not None and not 1 <= provisioned <= most:
        raise ValidationException(
            f"{member}.ProvisionedConcurrency: {provisioned} must be between 1 and "
            f"the variant's MaxConcurrency ({most})"
        )


def updated(
    member: str, variant: dict[str, Any], update: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The variant's ServerlessConfig as UpdateEndpointWeightsAndCapacities' `update`
    (ServerlessUpdateConfig) changes it, checked; None when it asks for no change."""
    if not update:
        return None
    config = {**(config_of(variant) or {}), **update}
    _check_concurrency(f"{member}.ServerlessUpdateConfig", config)
    return config


def check_config(request: dict[str, Any]) -> None:
    """What SageMaker excludes from a configuration with a serverless variant."""
    variants = request["ProductionVariants"]
    if not any(config_of(v) is not None for v in variants):
        return
    if len(variants) > 1:
        raise ValidationException(
            "ProductionVariants: an endpoint configuration with a serverless variant has only "
            "that variant"
        )
    for member in ("DataCaptureConfig", "AsyncInferenceConfig"):
        if request.get(member) is not None:
            raise ValidationException(
                f"{member}: serverless endpoints do not support it, as on SageMaker"
            )


def memory_bytes(variant: dict[str, Any]) -> int | None:
    config = config_of(variant)
    return None if config is None else int(config["MemorySizeInMB"]) * MIB


def warm_count(variant: dict[str, Any]) -> int:
    """Instances a serverless variant keeps with no invocation: one when it has provisioned
    concurrency."""
    config = config_of(variant) or {}
    return 1 if config.get("ProvisionedConcurrency") else 0


def demand_file(settings: Settings, endpoint: str, variant: str) -> Path:
    return settings.home / "endpoints" / endpoint / "serverless" / variant


def mark(path: Path) -> None:
    """Note an invocation of the variant now (the file's modification time)."""
    try:
        os.utime(path)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def last_asked(path: Path) -> float | None:
    """When the variant was last invoked (time.time()), None if never."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None


class Gate:
    """The proxy's count of each serverless variant's invocations under way."""

    def __init__(self) -> None:
        self._under_way: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def held(self, endpoint: str, variant: str, most: int) -> Iterator[None]:
        key = (endpoint, variant)
        with self._lock:
            if self._under_way.get(key, 0) >= most:
                raise Throttled(
                    f"Rate exceeded: the serverless variant {variant} of endpoint {endpoint} has "
                    f"{most} invocations under way, its MaxConcurrency."
                )
            self._under_way[key] = self._under_way.get(key, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._under_way[key] -= 1
