"""How a transform job batches and how many requests it keeps in flight: the request's values,
then what the container's `GET /execution-parameters` offers, then SageMaker's defaults; and
what the container is told of them in its environment."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_PAYLOAD_MB = 6
DEFAULT_MAX_CONCURRENT = 1
DEFAULT_STRATEGY = "SingleRecord"
_STRATEGY_ENV = {"SingleRecord": "SINGLE_RECORD", "MultiRecord": "MULTI_RECORD"}
_STRATEGY_OFFERED = {"SINGLE_RECORD": "SingleRecord", "MULTI_RECORD": "MultiRecord"}


@dataclass(frozen=True)
class Parameters:
    max_concurrent: int
    strategy: str  # SingleRecord | MultiRecord
    max_payload_mb: int  # 0: no limit (the whole object, sent in chunks)


def environment(request: dict[str, Any]) -> dict[str, str]:
    """The variables a transform job's containers get (on top of the model's and the job's)."""
    env = {"SAGEMAKER_BATCH": "true"}
    if (payload := request.get("MaxPayloadInMB")) is not None:
        env["SAGEMAKER_MAX_PAYLOAD_IN_MB"] = str(payload)
    if (strategy := request.get("BatchStrategy")) is not None:
        env["SAGEMAKER_BATCH_STRATEGY"] = _STRATEGY_ENV[strategy]
    if (concurrent := request.get("MaxConcurrentTransforms")) is not None:
        env["SAGEMAKER_MAX_CONCURRENT_TRANSFORMS"] = str(concurrent)
    return env


def resolve(request: dict[str, Any], offered: dict[str, Any]) -> Parameters:
    """`offered`: what the container's /execution-parameters answered ({} when nothing)."""
    strategy = request.get("BatchStrategy") or _STRATEGY_OFFERED.get(
        str(offered.get("BatchStrategy", "")).upper()
    )
    return Parameters(
        max_concurrent=_whole(request.get("MaxConcurrentTransforms"))
        or _whole(offered.get("MaxConcurrentTransforms"))
        or DEFAULT_MAX_CONCURRENT,
        strategy=strategy or DEFAULT_STRATEGY,
        max_payload_mb=_first_whole(
            request.get("MaxPayloadInMB"), offered.get("MaxPayloadInMB"), DEFAULT_MAX_PAYLOAD_MB
        ),
    )


def _whole(value: Any) -> int | None:
    """A positive whole number, or None (a container may answer anything)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 1000:
        return value
    return None


def _first_whole(*values: Any) -> int:
    for value in values:
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 100:
            return value
    return DEFAULT_MAX_PAYLOAD_MB
