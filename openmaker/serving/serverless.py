"""Serverless variants (`ProductionVariants[].ServerlessConfig`): instances only while there
are invocations, each serving one at a time, as SageMaker's serverless workers do.

- CreateEndpointConfig checks the config as SageMaker does (`check`).
- The proxy (in the server) counts each variant's invocations under way and gives each an
  instance serving no other (`Gate`); one over `MaxConcurrency` under way is refused with a
  `ThrottlingException` (429). It writes what it counts — invocations under way, instances busy,
  when each last served — to the variant's demand file (`Demand`), again and again while an
  invocation waits for an instance.
- The endpoint's worker reads that file every second (serving/worker.py): while invocations
  under way outnumber the instances it starts more (a cold start each, up to MaxConcurrency;
  the proxy's wait for a new one is the `ModelSetupTime` metric); it keeps
  `ProvisionedConcurrency` instances warm from the start; an instance idle (not busy, not used)
  for `OPENMAKER_SERVERLESS_IDLE_SECONDS` stops, one at a time, never below what is kept warm
  nor below the invocations under way.
- Each instance reserves `MemorySizeInMB` of the machine's memory (and a `PLACEMENT_TYPE`'s
  CPUs) as other instances reserve theirs (serving/placement.py), fits by it, and its container
  is held to it when instances are held to their share; as those, it never waits for
  capacity: a cold start that does not fit starts as many as fit, and for those that do not the
  worker notes refusals (`note`, `refusal_file`), each answering one invocation waiting, the
  latest to come, with a `ThrottlingException` (`Gate.outcome`).
- A cold start that fails otherwise (the model data, the image, `/ping`) is noted too (`note`,
  `failure_file`, one entry per instance that failed): each failure answers one invocation
  waiting, the one waiting longest, with a `ModelNotReadyException` and the reason at once.
  The others keep waiting for the instances started for them, and are answered if those
  start. Another cold start is tried only for invocations asking after `retry_delay` (1 s, then
  doubling up to 30 s while they keep failing).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openmaker.files import replace_whole
from openmaker.settings import Settings
from openmaker.shapes.errors import ValidationException

MEMORY_SIZES = (1024, 2048, 3072, 4096, 5120, 6144)
MAX_CONCURRENCY = 200
# What a serverless instance is placed as on this machine, for its CPUs (its memory is its own).
PLACEMENT_TYPE = "ml.t3.medium"
MIB = 1024 * 1024
CONFIG = "ServerlessConfig"
# How long a count of invocations asking for instances holds (those waiting write it every
# COLD_START_POLL_SECONDS, serving/proxy.py).
ASKING_SECONDS = 3.0
# A cold start that failed is tried again (for invocations asking) after a delay doubling with
# each failure in a row, from the first to the most.
RETRY_FIRST_SECONDS = 1.0
RETRY_MOST_SECONDS = 30.0
# The cold starts a variant's failure or refusal file keeps: as many as could be waited on.
KEPT_FAILURES = MAX_CONCURRENCY
# What ended an invocation's wait for a cold start (Gate.outcome).
FAILED, REFUSED = "failed", "refused"


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
    """Instances a serverless variant keeps with no invocation: its ProvisionedConcurrency."""
    config = config_of(variant) or {}
    return int(config.get("ProvisionedConcurrency") or 0)


def demand_file(settings: Settings, endpoint: str, variant: str) -> Path:
    return settings.home / "endpoints" / endpoint / "serverless" / variant


def refusal_file(settings: Settings, endpoint: str, variant: str) -> Path:
    return demand_file(settings, endpoint, variant).with_name(f"{variant}.refused")


@dataclass(frozen=True)
class Demand:
    """What the proxy last wrote of a variant's invocations (`demand_file`)."""

    asking: int  # invocations under way, those waiting for an instance included
    busy: frozenset[str]  # the instances (host:port) serving one now
    used: dict[str, float]  # when each instance last served one (time.time())
    written: float  # when this was written (time.time()); 0.0: never


def read_demand(path: Path) -> Demand:
    try:
        written = path.stat().st_mtime
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return Demand(0, frozenset(), {}, 0.0)
    return Demand(int(data["asking"]), frozenset(data["busy"]), dict(data["used"]), written)


def failure_file(settings: Settings, endpoint: str, variant: str) -> Path:
    return demand_file(settings, endpoint, variant).with_name(f"{variant}.failed")


@dataclass(frozen=True)
class Failure:
    """One cold start that failed or was refused (`failure_file`, `refusal_file`): the
    `seq`-th the file noted, at `at` (time.time())."""

    seq: int
    at: float
    reason: str


def note(path: Path, reason: str, starts: int = 1) -> None:
    """Note that `starts` cold starts failed (or were refused) now: the proxy answers one
    invocation waiting for each. The file keeps the latest KEPT_FAILURES and how many there
    were in all."""
    failures = read_failures(path)
    count = failures[-1].seq if failures else 0
    now = time.time()
    kept = [[f.at, f.reason] for f in failures] + [[now, reason]] * starts
    data = {"count": count + starts, "failures": kept[-KEPT_FAILURES:]}
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_whole(path, json.dumps(data))


def read_failures(path: Path) -> list[Failure]:
    """The cold starts `path` noted, oldest first (the latest KEPT_FAILURES)."""
    try:
        data = json.loads(path.read_text())
        count, kept = int(data["count"]), list(data["failures"])
    except (OSError, ValueError, KeyError, TypeError):
        return []
    first = count - len(kept) + 1
    return [Failure(first + i, float(at), str(reason)) for i, (at, reason) in enumerate(kept)]


def retry_delay(failures: int) -> float:
    """How long after its `failures`-th failure in a row a cold start is tried again."""
    return min(RETRY_FIRST_SECONDS * 2 ** max(failures - 1, 0), RETRY_MOST_SECONDS)


@dataclass
class Slot:
    """One invocation of a serverless variant under way; `address`: the instance serving it
    (empty until it has one)."""

    key: tuple[str, str]
    demand: Path
    address: str = ""
    since: float = field(default_factory=time.time)  # when it came (time.time())
    # What ended its wait for a cold start (Gate.outcome): FAILED or REFUSED, and why.
    outcome: tuple[str, str] | None = None


class Gate:
    """The proxy's view of each serverless variant's invocations: how many are under way
    (against MaxConcurrency) and which instances serve one, each serving one at a time. Every
    change is written to the variant's demand file for the endpoint's worker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._busy: dict[tuple[str, str], set[str]] = {}
        self._used: dict[tuple[str, str], dict[str, float]] = {}
        # The invocations under way, in the order they came; per variant and kind (FAILED,
        # REFUSED), the last noted cold start already handed out (its Failure.seq).
        self._slots: dict[tuple[str, str], list[Slot]] = {}
        self._seen: dict[tuple[str, str, str], int] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def held(self, endpoint: str, variant: str, most: int) -> Iterator[Slot]:
        key = (endpoint, variant)
        slot = Slot(key, demand_file(self.settings, endpoint, variant))
        with self._lock:
            if len(self._slots.get(key, ())) >= most:
                raise Throttled(
                    f"Rate exceeded: the serverless variant {variant} of endpoint {endpoint} has "
                    f"{most} invocations under way, its MaxConcurrency."
                )
            self._slots.setdefault(key, []).append(slot)
            self._publish(slot)
        try:
            yield slot
        finally:
            with self._lock:
                self._slots[key].remove(slot)
                if slot.address:
                    self._busy[key].discard(slot.address)
                    self._used.setdefault(key, {})[slot.address] = time.time()
                self._publish(slot)

    def take(self, slot: Slot, addresses: Sequence[str]) -> str:
        """An instance among `addresses` serving no invocation, now serving `slot`'s ('' if
        none is free). The one that served last is taken, so that the others go idle."""
        with self._lock:
            busy = self._busy.setdefault(slot.key, set())
            used = self._used.setdefault(slot.key, {})
            for gone in set(used) - set(addresses) - busy:
                del used[gone]
            free = [a for a in addresses if a not in busy]
            if not free:
                return ""
            slot.address = max(free, key=lambda a: used.get(a, 0.0))
            busy.add(slot.address)
            self._publish(slot)
            return slot.address

    def ask(self, slot: Slot) -> None:
        """Say again that `slot` waits for an instance (the worker heeds recent asks only)."""
        with self._lock:
            self._publish(slot)

    def outcome(self, slot: Slot) -> tuple[str, str] | None:
        """What ended `slot`'s wait for a cold start, if something did: FAILED or REFUSED, and
        why. Each cold start noted as failed answers one invocation, the one waiting longest;
        each refused, the latest to come (the start asked for last); neither answers one that
        came after it was noted."""
        noted = [
            (FAILED, read_failures(failure_file(self.settings, *slot.key))),
            (REFUSED, read_failures(refusal_file(self.settings, *slot.key))),
        ]
        with self._lock:
            for kind, failures in noted:
                self._hand_out(slot.key, kind, failures)
            return slot.outcome

    def _hand_out(self, key: tuple[str, str], kind: str, failures: list[Failure]) -> None:
        seen = self._seen.get((*key, kind), 0)
        waiting = [s for s in self._slots.get(key, ()) if not s.address and s.outcome is None]
        if kind == REFUSED:
            waiting.reverse()
        for failure in failures:
            if failure.seq <= seen:
                continue
            seen = failure.seq
            taker = next((s for s in waiting if s.since <= failure.at), None)
            if taker is not None:
                taker.outcome = (kind, failure.reason)
                waiting.remove(taker)
        self._seen[(*key, kind)] = seen

    def _publish(self, slot: Slot) -> None:
        key = slot.key
        state = {
            "asking": len(self._slots.get(key, ())),
            "busy": sorted(self._busy.get(key, ())),
            "used": self._used.get(key, {}),
        }
        slot.demand.parent.mkdir(parents=True, exist_ok=True)
        replace_whole(slot.demand, json.dumps(state))
