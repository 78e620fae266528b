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
- `RollingUpdatePolicy` (an endpoint of one variant on instances): `MaximumBatchSize` (5-50 %
  of its instances) new instances started, healthy, put in the route, then as many old ones
  retired, and so on, `WaitIntervalInSeconds` between batches. A batch that fails (or a
  deployment past `MaximumExecutionTimeoutInSeconds`) rolls back: the old configuration's
  instances retired so far start again, `RollbackMaximumBatchSize` at a time (all at once
  without it), each batch healthy before as many new instances go.
- Refused: `AutoRollbackConfiguration.Alarms` (openmaker has no CloudWatch alarms to watch).
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
ROLLING = "DeploymentConfig.RollingUpdatePolicy"


@dataclass(frozen=True)
class Deployment:
    steps: tuple[float, ...]  # the new fleet's share of the traffic after each step; the last 1
    wait_seconds: float  # between steps
    termination_wait_seconds: float
    timeout_seconds: float | None  # for the whole update, from the request
    # A rolling update's: instances replaced at a time (None: blue/green).
    batch: int | None = None
    # A rolling update's rollback: old instances started again at a time (None: all at once).
    rollback_batch: int | None = None

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
            data.get("batch"),
            data.get("rollback_batch"),
        )


ALL_AT_ONCE = Deployment((1.0,), 0.0, 0.0, None)


def parse(request: dict[str, Any], old: dict[str, Any], new: dict[str, Any]) -> Deployment:
    """The deployment UpdateEndpoint `request` asks for, from configuration `old` to `new`."""
    config = request.get("DeploymentConfig") or {}
    alarms = (config.get("AutoRollbackConfiguration") or {}).get("Alarms")
    if alarms:
        raise ValidationException(
            "DeploymentConfig.AutoRollbackConfiguration.Alarms: openmaker has no CloudWatch "
            "alarms, so none can roll a deployment back; leave AutoRollbackConfiguration out"
        )
    if config.get("RollingUpdatePolicy") is not None:
        return _rolling(config, old, new)
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
        _same_variants(old, new, f"{ROUTING}.Type")
        if any(serverless.config_of(v) is not None for v in new["ProductionVariants"]):
            raise ValidationException(
                f"{ROUTING}.Type: a serverless variant's traffic moves ALL_AT_ONCE"
            )
        count = sum(int(v["InitialInstanceCount"]) for v in new["ProductionVariants"])
        if kind == "CANARY":
            share = _share(routing, "CanarySize", count, ROUTING)
            if share > 0.5:
                raise ValidationException(
                    f"{ROUTING}.CanarySize: the canary must be at most 50% of the new fleet "
                    f"({count} instances)"
                )
            steps = (share, 1.0)
        else:
            share = _share(routing, "LinearStepSize", count, ROUTING)
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


def _rolling(config: dict[str, Any], old: dict[str, Any], new: dict[str, Any]) -> Deployment:
    """A rolling update: `MaximumBatchSize` instances of the old fleet replaced at a time, each
    batch `WaitIntervalInSeconds` after the last was healthy."""
    if config.get("BlueGreenUpdatePolicy") is not None:
        raise ValidationException(
            "DeploymentConfig: give one update policy, BlueGreenUpdatePolicy or RollingUpdatePolicy"
        )
    policy = config["RollingUpdatePolicy"]
    _same_variants(old, new, ROLLING)
    variants = new["ProductionVariants"]
    if len(variants) != 1 or serverless.config_of(variants[0]) is not None:
        raise ValidationException(
            f"{ROLLING}: as on SageMaker, a rolling update takes an endpoint of one variant on "
            "instances (not serverless)"
        )
    count = int(variants[0]["InitialInstanceCount"])
    share = _share(policy, "MaximumBatchSize", count, ROLLING)
    if not 0.05 <= share <= 0.5:
        raise ValidationException(
            f"{ROLLING}.MaximumBatchSize: a batch must be 5-50% of the variant's instances "
            f"({count})"
        )
    batch = max(1, math.floor(share * count))
    rollback = None
    if policy.get("RollbackMaximumBatchSize") is not None:
        back = _share(policy, "RollbackMaximumBatchSize", count, ROLLING)
        if back <= 0:
            raise ValidationException(
                f"{ROLLING}.RollbackMaximumBatchSize: a batch must be at least one instance"
            )
        rollback = max(1, min(math.floor(back * count), count))
    wait = float(policy["WaitIntervalInSeconds"])
    timeout = policy.get("MaximumExecutionTimeoutInSeconds")
    waiting = wait * math.ceil(count / batch)
    if timeout is not None and timeout <= waiting:
        raise ValidationException(
            f"{ROLLING}.MaximumExecutionTimeoutInSeconds: {timeout} must be larger than the "
            f"deployment's waits ({waiting:g} seconds)"
        )
    timeout_seconds = None if timeout is None else float(timeout)
    return Deployment((1.0,), wait, 0.0, timeout_seconds, batch, rollback)


def _share(policy: dict[str, Any], member: str, count: int, prefix: str) -> float:
    size = policy.get(member)
    if size is None:
        raise ValidationException(f"{prefix}.{member}: this deployment needs its {member}")
    value = int(size["Value"])
    if size["Type"] == "INSTANCE_COUNT":
        return value / count
    if value > 100:
        raise ValidationException(f"{prefix}.{member}.Value: {value}% is over 100%")
    return value / 100


def _same_variants(old: dict[str, Any], new: dict[str, Any], member: str) -> None:
    names = sorted(v["VariantName"] for v in old["ProductionVariants"])
    if sorted(v["VariantName"] for v in new["ProductionVariants"]) != names:
        raise ValidationException(
            f"{member}: a canary, linear or rolling deployment keeps the endpoint's variant "
            f"names ({', '.join(names)})"
        )
