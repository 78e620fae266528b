"""Shadow variants (`ShadowProductionVariants`): a model served beside the production variant,
sent a sampled copy of the production traffic, its answers discarded.

An endpoint configuration with a shadow has exactly one production variant and one shadow
variant (botocore's model says so). The shadow's instances start, are watched and are retired
with the production ones (serving/worker.py); the route lists them apart (endpoints.Route
`shadows`), so no invocation is answered by them and `TargetVariant` cannot name them.

A real-time invocation is answered by the production variant; the fraction of invocations
that is copied is the shadow's `InitialVariantWeight` over the production variant's, at most 1
(SAMPLED). The copy (same body and passed headers) goes to a shadow instance from a thread of
this module's pool, after the production variant's instance is chosen: it is measured in the
shadow variant's metrics and captured under its name as any invocation is, and never waited
for. A shadow with SHADOW_IN_FLIGHT copies under way is sent no more until one ends (those are
dropped, not queued), so a slow shadow costs the caller nothing. Streamed invocations
(InvokeEndpointWithResponseStream) are not copied; asynchronous endpoints take no shadow.

What SageMaker's shadow tests exclude is refused here: serverless variants, asynchronous
inference, multi-container (pipeline) and multi-model models.
"""

from __future__ import annotations

import queue
import random
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from openmaker.serving import multi_model, pipeline, serverless
from openmaker.shapes.errors import ValidationException

if TYPE_CHECKING:
    from openmaker.serving.endpoints import Route, Variant

FIELD = "ShadowProductionVariants"
PRODUCTION = "ProductionVariants"
WEIGHT = "InitialVariantWeight"
# Copies under way to one endpoint's shadow at most; past it, copies are dropped.
SHADOW_IN_FLIGHT = 8
# Threads sending copies, for every endpoint of this server.
SENDERS = 16

# Sends a copy as an invocation of the variant: endpoint, variant, address, log stream, body,
# headers, when it was taken (perf_counter); measures and captures it, its answer or failure
# discarded (proxy.Invoker).
Send = Callable[[str, "Variant", str, str, bytes, dict[str, str], float], object]


def of(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The configuration's shadow variants (none for most)."""
    return list(config.get(FIELD) or [])


def every_variant(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The production variants, then the shadow ones: every fleet the endpoint runs."""
    return list(config[PRODUCTION]) + of(config)


def members(config: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each variant with its request member (`ProductionVariants.1`, ...), for messages."""
    for field in (PRODUCTION, FIELD):
        for index, variant in enumerate(config.get(field) or [], start=1):
            yield f"{field}.{index}", variant


def sampled(config: dict[str, Any]) -> float:
    """The fraction of invocations copied to the shadow: its weight over the production
    variant's, at most 1 (all of them when the production variant's weight is 0)."""
    shadows = of(config)
    if not shadows:
        return 0.0
    production = float(config[PRODUCTION][0].get(WEIGHT, 1.0))
    shadow = float(shadows[0].get(WEIGHT, 1.0))
    if production <= 0:
        return 1.0 if shadow > 0 else 0.0
    return min(shadow / production, 1.0)


def check(request: dict[str, Any]) -> None:
    """CreateEndpointConfig's rules for a configuration with a shadow (models: see
    check_models)."""
    shadows = request.get(FIELD)
    if shadows is None:
        return
    production = request[PRODUCTION]
    if len(production) != 1:
        raise ValidationException(
            f"{PRODUCTION}: an endpoint configuration with {FIELD} has exactly one production "
            f"variant (this one has {len(production)})"
        )
    if len(shadows) != 1:
        raise ValidationException(
            f"{FIELD}: an endpoint configuration has at most one shadow variant "
            f"(this one has {len(shadows)})"
        )
    if request.get("AsyncInferenceConfig") is not None:
        raise ValidationException(
            f"{FIELD}: an asynchronous endpoint takes no shadow variant, as on SageMaker"
        )
    for member, variant in members(request):
        if serverless.config_of(variant) is not None:
            raise ValidationException(
                f"{member}.{serverless.CONFIG}: an endpoint with a shadow variant serves on "
                "instances, not serverless, as on SageMaker"
            )


def check_models(request: dict[str, Any], models: dict[str, dict[str, Any]]) -> None:
    """A configuration with a shadow: each variant's model (`models`, CreateModel requests by
    name) is one container serving one model."""
    if request.get(FIELD) is None:
        return
    for member, variant in members(request):
        model = models[variant["ModelName"]]
        containers = pipeline.containers(model)
        if len(containers) > 1 or any(multi_model.is_multi_model(c) for c in containers):
            raise ValidationException(
                f"{member}.ModelName: the model {variant['ModelName']} has several containers "
                "or serves several models; an endpoint with a shadow variant takes neither, as "
                "on SageMaker"
            )


def check_update(old: dict[str, Any], new: dict[str, Any], request: dict[str, Any]) -> None:
    """UpdateEndpoint between configurations where either has a shadow: all at once (the
    traffic of a canary, linear or rolling deployment has no place for a shadow)."""
    if not of(old) and not of(new):
        return
    config = request.get("DeploymentConfig") or {}
    routing = (config.get("BlueGreenUpdatePolicy") or {}).get("TrafficRoutingConfiguration")
    stepped = routing is not None and routing.get("Type") != "ALL_AT_ONCE"
    if stepped or config.get("RollingUpdatePolicy") is not None:
        raise ValidationException(
            "DeploymentConfig: an update from or to a configuration with a shadow variant is "
            "deployed ALL_AT_ONCE"
        )


class Replicator:
    """Sends the sampled copies of an endpoint's invocations to its shadow, in the background:
    from daemon threads (SENDERS at most, started as copies need them), so that a copy a shadow
    never answers does not hold up the server's exit."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._in_flight: dict[str, int] = {}
        self._threads = 0

    def copy(self, name: str, route: Route, body: bytes, headers: dict[str, str]) -> None:
        """Perhaps (as sampled) send a copy of the invocation to the route's shadow."""
        shadow = _ready(route.shadows)
        if shadow is None or random.random() >= shadow.weight:
            return
        with self._lock:
            if self._in_flight.get(name, 0) >= SHADOW_IN_FLIGHT:
                return
            self._in_flight[name] = self._in_flight.get(name, 0) + 1
            if self._threads < min(sum(self._in_flight.values()), SENDERS):
                self._threads += 1
                threading.Thread(target=self._sender, name="shadow", daemon=True).start()
        taken = time.perf_counter()
        self._jobs.put(lambda: self._run(name, shadow, body, headers, taken))

    def _sender(self) -> None:
        while True:
            self._jobs.get()()

    def _run(
        self, name: str, shadow: Variant, body: bytes, headers: dict[str, str], taken: float
    ) -> None:
        index = random.randrange(len(shadow.addresses))
        try:
            self._send(
                name, shadow, shadow.addresses[index], shadow.streams[index], body, headers, taken
            )
        except Exception:  # a fault of openmaker's (`send` measures the shadow's failures)
            traceback.print_exc(file=sys.stderr)
        finally:
            self._done(name)

    def _done(self, name: str) -> None:
        with self._lock:
            left = self._in_flight.get(name, 1) - 1
            if left > 0:
                self._in_flight[name] = left
            else:
                self._in_flight.pop(name, None)


def _ready(shadows: Sequence[Variant]) -> Variant | None:
    """The shadow, when it has an instance in the route and copies to take."""
    for shadow in shadows:
        if shadow.addresses and shadow.weight > 0:
            return shadow
    return None
