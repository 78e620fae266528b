"""UpdateEndpoint's `DeploymentConfig`, checked and turned into the steps the endpoint's worker
takes (serving/worker.py): the share of the traffic the new fleet has after each step, the wait
between steps, the wait before the old fleet is stopped, and the time the whole may take.

- `BlueGreenUpdatePolicy.TrafficRoutingConfiguration.Type`: `ALL_AT_ONCE` (one step, the
  default), `CANARY` (`CanarySize`, at most half the new fleet, then the rest after
  `WaitIntervalInSeconds`), `LINEAR` (`LinearStepSize`, 10 to 50 % of the new fleet, each step
  `WaitIntervalInSeconds` after the last). Sizes are `INSTANCE_COUNT` (of the new fleet's
  instances) or `CAPACITY_PERCENT`. As on SageMaker, a canary or linear deployment keeps the
  variant names of the configuration it replaces.
- `TerminationWaitInSeconds`: how long the old fleet is kept (out of the route) once the new one
  has all the traffic. `MaximumExecutionTimeoutInSeconds`: past it, the update is rolled back
  (the old fleet has all the traffic again, the new one goes, the reason in FailureReason).
- Refused: `AutoRollbackConfiguration.Alarms` (openmaker has no CloudWatch alarms to watch) and
  `RollingUpdatePolicy`.
The whole new fleet is started and healthy before any traffic moves (SageMaker starts the
canary's instances first).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from openmaker.serving import serverless
from openmaker.shapes.errors import ValidationException

POLICY = "DeploymentConfig.BlueGreenUpdatePolicy"
ROUTING = f"{POLICY}.TrafficRoutingConfiguration"


@dataclass(frozen=True)
class Deployment:
    steps: tuple[float, ...]  # the new fleet's share of the traffic after each step; the last 1
    wait_seconds: float  # between steps
    termination_wait_seconds: float
    timeout_seconds: float | None  # for the whole update, from the request

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any] | None) -> Deployment:
        if data is None:
            return ALL_AT_ONCE
        return Deployment(
            tuple(data["steps"]),
            float(data["wait_seconds"]),
            float(data["termination_wait_seconds"]),
            data.get("timeout_seconds"),
        )


ALL_AT_ONCE = Deployment((1.0,), 0.0, 0.0, None)


def parse(request: dict[str, Any], old: dict[str, Any], new: dict[str, Any]) -> Deployment:
    """The deployment UpdateEndpoint `request` asks for, from configuration `old` to `new`."""
    config = request.get("DeploymentConfig") or {}
    if config.get("RollingUpdatePolicy") is not None:
        raise ValidationException(
            "DeploymentConfig.RollingUpdatePolicy: openmaker updates endpoints blue/green "
            "only (BlueGreenUpdatePolicy)"
        )
    alarms = (config.get("AutoRollbackConfiguration") or {}).get("Alarms")
    if alarms:
        raise ValidationException(
            "DeploymentConfig.AutoRollbackConfiguration.Alarms: openmaker has no CloudWatch "
            "alarms, so none can roll a deployment back; leave AutoRollbackConfiguration out"
        )
    policy = config.get("BlueGreenUpdatePolicy")
    if policy is None:
        return ALL_AT_ONCE
    routing = policy["TrafficRoutingConfiguration"]
    kind = routing["Type"]
    wait = float(routing.get("WaitIntervalInSeconds", 0))
    termination = float(policy.get("TerminationWaitInSeconds", 0))
    timeout = policy.get("MaximumExecutionTimeoutInSeconds")
    if kind == "ALL_AT_ONCE":
        steps: tuple[float, ...] = (1.0,)
    else:
        _same_variants(old, new)
        if any(serverless.config_of(v) is not None for v in new["ProductionVariants"]):
            raise ValidationException(
                f"{ROUTING}.Type: a serverless variant's traffic moves ALL_AT_ONCE"
            )
        count = sum(int(v["InitialInstanceCount"]) for v in new["ProductionVariants"])
        if kind == "CANARY":
            share = _share(routing, "CanarySize", count)
            if share > 0.5:
                raise ValidationException(
                    f"{ROUTING}.CanarySize: the canary must be at most 50% of the new fleet "
                    f"({count} instances)"
                )
            steps = (share, 1.0)
        else:
            share = _share(routing, "LinearStepSize", count)
            if not 0.1 <= share <= 0.5:
                raise ValidationException(
                    f"{ROUTING}.LinearStepSize: each step must be 10-50% of the new fleet "
                    f"({count} instances)"
                )
            steps = tuple(min(share * (i + 1), 1.0) for i in range(math.ceil(1 / share)))
    waiting = wait * (len(steps) - 1) + termination
    if timeout is not None and timeout <= waiting:
        raise ValidationException(
            f"{POLICY}.MaximumExecutionTimeoutInSeconds: {timeout} must be larger than the "
            f"deployment's waits ({waiting:g} seconds)"
        )
    return Deployment(steps, wait, termination, None if timeout is None else float(timeout))


def _share(routing: dict[str, Any], member: str, count: int) -> float:
    size = routing.get(member)
    if size is None:
        raise ValidationException(
            f"{ROUTING}.{member}: a {routing['Type']} deployment needs its {member}"
        )
    value = int(size["Value"])
    if size["Type"] == "INSTANCE_COUNT":
        return value / count
    if value > 100:
        raise ValidationException(f"{ROUTING}.{member}.Value: {value}% is over 100%")
    return value / 100


def _same_variants(old: dict[str, Any], new: dict[str, Any]) -> None:
    names = sorted(v["VariantName"] for v in old["ProductionVariants"])
    if sorted(v["VariantName"] for v in new["ProductionVariants"]) != names:
        raise ValidationException(
            f"{ROUTING}.Type: a canary or linear deployment keeps the endpoint's variant names "
            f"({', '.join(names)})"
        )
