"""What SageMaker fills in for a request that leaves a member out, where the model's
constraints do not say it. Light on purpose: the CLI reads these at its start."""

from __future__ import annotations

# SageMaker's default when the request has no StoppingCondition: "The default value is 1 day"
# (MaxRuntimeInSeconds in the model's documentation; no number in its constraints).
_DEFAULT_MAX_RUNTIME_SECONDS = 24 * 60 * 60


def default_stopping_condition() -> dict[str, int]:
    return {"MaxRuntimeInSeconds": _DEFAULT_MAX_RUNTIME_SECONDS}
