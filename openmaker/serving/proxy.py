"""InvokeEndpoint: a request passed to one healthy instance of the endpoint, its answer back.

The variant is chosen by weight (`VariantWeight / sum`), or named by `TargetVariant`; the
instance at random among the variant's healthy ones. The container's 2xx answer comes back as
it is (body, Content-Type, Custom-Attributes); any other status is a ModelError carrying the
container's status and message. Bodies are at most 6 MiB each way. A multi-model endpoint's
request goes to its TargetModel (serving/multi_model.py), an inference pipeline's through its
containers (serving/pipeline.py). Connections to the instances are kept alive and reused: the
runtime API's invocations of a single container are exchanged on the server's event loop
(`invoke_async`, serving/async_exchange.py), others from a thread (`invoke`, serving/pool.py).
Each invocation is measured for the endpoint's CloudWatch metrics (serving/metrics.py). An
endpoint with a shadow variant has a sampled copy of each invocation sent to it in the
background (serving/shadow.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from openmaker.serving import multi_model, pipeline, serverless, shadow
from openmaker.serving.async_exchange import AsyncConnections, ExchangeError
from openmaker.serving.capture import Capture
from openmaker.serving.endpoints import Endpoints, Route, Variant
from openmaker.serving.instance import instance_folder
from openmaker.serving.kind import log_group
from openmaker.serving.metrics import InvocationMetrics
from openmaker.serving.pool import ConnectionPool
from openmaker.serving.ray_instances import AgentFetcher
from openmaker.serving.refused import Refused

MAX_PAYLOAD_BYTES = 6 * 1024 * 1024
# How long where an endpoint's instances are is taken as known (each request reading the
# database would cost more than the invocation).
ROUTE_SECONDS = 1.0
# OriginalMessage carries at most this much of the container's answer.
ORIGINAL_MESSAGE_CHARS = 2048
# Request headers passed to the container (SageMaker's own, and the content negotiation).
PASSED_HEADERS = (
    "Content-Type",
    "Accept",
    "X-Amzn-SageMaker-Custom-Attributes",
    "X-Amzn-SageMaker-Target-Model",
    "X-Amzn-SageMaker-Inference-Id",
    "X-Amzn-SageMaker-Target-Container-Hostname",
)
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
# How long an invocation waits for a serverless variant's instance to start, and how often it
# looks whether it has.
COLD_START_SECONDS = 180.0
COLD_START_POLL_SECONDS = 0.1


class InvocationError(Exception):
    """Why an invocation was not answered: `code` is the runtime's error code."""

    def __init__(self, code: str, status: int, message: str, **extra: object) -> None:
        super().__init__(message)
        self.code, self.status, self.message, self.extra = code, status, message, extra
        # For the metrics, where a container was sent the invocation: the status it answered
        # (None: it did not) and how long that took.
        self.container_status: int | None = None
        self.model_seconds: float | None = None


@dataclass(frozen=True)
class Answer:
    body: bytes
    content_type: str
    variant: str
    headers: dict[str, str] = field(default_factory=dict)
    model_seconds: float = 0.0  # how long the container took


class Invoker:
    def __init__(self, endpoints: Endpoints, region: str, account_id: str) -> None:
        self.endpoints, self.region, self.account_id = endpoints, region, account_id
        self._routes: dict[str, tuple[float, Route | None]] = {}
        self.capture = Capture(endpoints.sessions, endpoints.settings.store)
        # SageMaker's: the container must answer an invocation within 60 s.
        self.invocation_seconds = endpoints.settings.invocation_seconds
        self.connections = ConnectionPool(self.invocation_seconds)
        self.loop_connections = AsyncConnections(self.invocation_seconds)
        self.metrics = InvocationMetrics(endpoints.sessions)
        self.serverless = serverless.Gate(endpoints.settings)
        self.multi_models = multi_model.MultiModels(self.invocation_seconds)
        self.shadows = shadow.Replicator(self._shadow_invoke)

    def invoke(
        self,
        name: str,
        body: bytes,
        headers: dict[str, str],
        target_variant: str | None,
        received: float | None = None,
    ) -> Answer:
        """`received`: when the request arrived (time.perf_counter), for OverheadLatency."""
        received = time.perf_counter() if received is None else received
        chosen, address, stream = self._choose(name, target_variant)
        self._copy_to_shadow(name, body, headers)
        if chosen.serverless is None:
            return self._invoke(name, chosen, address, stream, body, headers, received)
        with self._serverless_held(name, chosen) as slot:
            chosen, address, stream = self._warm(name, chosen, slot)
            return self._invoke(name, chosen, address, stream, body, headers, received)

    def _invoke(
        self,
        name: str,
        chosen: Variant,
        address: str,
        stream: str,
        body: bytes,
        headers: dict[str, str],
        received: float,
    ) -> Answer:
        variant = chosen.name
        try:
            answer = self._dispatch(name, chosen, address, stream, body, headers)
        except InvocationError as exc:
            self.measure(name, variant, exc.container_status, exc.model_seconds, received)
            raise
        self.capture.record(name, variant, body, headers, answer.body, answer.content_type)
        self.measure(name, variant, 200, answer.model_seconds, received)
        return answer

    @contextlib.contextmanager
    def _serverless_held(self, name: str, variant: Variant) -> Iterator[serverless.Slot]:
        """A serverless variant's invocation: within its MaxConcurrency, and counted as under
        way until it ends (what the worker scales by, serving/serverless.py)."""
        assert variant.serverless is not None
        most = int(variant.serverless["MaxConcurrency"])
        try:
            with self.serverless.held(name, variant.name, most) as slot:
                yield slot
        except serverless.Throttled as exc:
            raise InvocationError("ThrottlingException", 429, str(exc)) from None

    def _warm(self, name: str, variant: Variant, slot: serverless.Slot) -> tuple[Variant, str, str]:
        """A serverless instance serving no other invocation, else one more started for this
        one (a cold start: the worker starts it on the demand file, serving/serverless.py), or
        one freed meanwhile by another invocation."""
        waiting = False
        deadline = time.monotonic() + COLD_START_SECONDS
        found: Variant | None = variant
        while found is not None and time.monotonic() < deadline:
            address = self.serverless.take(slot, found.addresses)
            if address:
                return found, address, found.streams[found.addresses.index(address)]
            if waiting:
                self.serverless.ask(slot)
                ended = self.serverless.outcome(slot)
                if ended is not None and ended[0] == serverless.REFUSED:
                    raise InvocationError("ThrottlingException", 429, f"Rate exceeded: {ended[1]}")
                if ended is not None:  # SageMaker's word for resources not provisioned
                    raise InvocationError(
                        "ModelNotReadyException",
                        429,
                        f"The serverless variant {variant.name} of endpoint {name} could not "
                        f"start an instance for this invocation: {ended[1]}",
                    )
                time.sleep(COLD_START_POLL_SECONDS)
            route = self.endpoints.route(name)
            self._routes[name] = (time.monotonic(), route)
            found = next(
                (v for v in (route.variants if route else ()) if v.name == variant.name), None
            )
            waiting = True
        raise InvocationError(
            "ModelNotReadyException",
            429,
            f"The serverless variant {variant.name} of endpoint {name} has no instance ready "
            f"yet ({COLD_START_SECONDS:g} seconds after this invocation asked for one); try "
            "again.",
        )

    async def invoke_async(
        self,
        name: str,
        body: bytes,
        headers: dict[str, str],
        target_variant: str | None,
        received: float | None = None,
    ) -> Answer:
        """`invoke`, from the event loop: the exchange with the container is made on the loop
        (serving/async_exchange.py); only what may read the database (a route or a capture
        setting not read in the last second) goes to a thread."""
        received = time.perf_counter() if received is None else received
        if self._route_known(name):
            chosen, address, stream = self._choose(name, target_variant)
        else:
            chosen, address, stream = await asyncio.to_thread(self._choose, name, target_variant)
        if chosen.serverless is not None or not self._single(name, chosen, headers):
            # A serverless variant (its concurrency and cold start), a pipeline, a multi-model
            # endpoint.
            return await asyncio.to_thread(
                self.invoke, name, body, headers, target_variant, received
            )
        self._copy_to_shadow(name, body, headers)
        variant = chosen.name
        sent = {k: v for k, v in headers.items() if k in PASSED_HEADERS}
        started = time.perf_counter()
        try:
            try:
                reply = await self.loop_connections.post(
                    address, "/invocations", sent, body, MAX_PAYLOAD_BYTES
                )
            except ExchangeError as exc:
                raise self.model_error(
                    name, stream, 500, f"the model container did not answer: {exc}", variant
                ) from None
            answer = self._answered(
                name,
                stream,
                variant,
                reply.status,
                reply.body,
                reply.headers.get("content-type"),
                reply.headers.get(CUSTOM_ATTRIBUTES.lower()),
                time.perf_counter() - started,
            )
        except InvocationError as exc:
            self.measure(name, variant, exc.container_status, exc.model_seconds, received)
            raise
        if self.capture.known(name):
            self.capture.record(name, variant, body, headers, answer.body, answer.content_type)
        else:
            await asyncio.to_thread(
                self.capture.record,
                name,
                variant,
                body,
                headers,
                answer.body,
                answer.content_type,
            )
        self.measure(name, variant, 200, answer.model_seconds, received)
        return answer

    def _copy_to_shadow(self, name: str, body: bytes, headers: dict[str, str]) -> None:
        """A copy of the invocation to the endpoint's shadow, if it has one (the route `_choose`
        just read)."""
        route = self._routes[name][1]
        if route is not None and route.shadows:
            self.shadows.copy(name, route, body, headers)

    def _shadow_invoke(
        self,
        name: str,
        variant: Variant,
        address: str,
        stream: str,
        body: bytes,
        headers: dict[str, str],
        taken: float,
    ) -> None:
        """A copy sent to the shadow: measured and captured, its answer discarded."""
        with contextlib.suppress(InvocationError):
            self._invoke(name, variant, address, stream, body, headers, taken)

    def _single(self, name: str, variant: Variant, headers: dict[str, str]) -> bool:
        """Whether the invocation goes to one container as it is (not through a pipeline nor
        to a multi-model container's model): the event loop's path takes only those."""
        try:
            chain = pipeline.chosen(variant.model, name, headers.get(pipeline.TARGET_HOSTNAME))
            target = multi_model.target(variant.model, name, headers.get(multi_model.TARGET_MODEL))
        except Refused:
            return False  # the thread's path refuses it as it should
        return not chain and target is None

    def _route_known(self, name: str) -> bool:
        known = self._routes.get(name)
        return known is not None and time.monotonic() - known[0] < ROUTE_SECONDS

    def measure(
        self,
        name: str,
        variant: str,
        status: int | None,
        model_seconds: float | None,
        received: float,
    ) -> None:
        """One invocation sent to the variant, for its metrics (InvocationMetrics.record);
        `received`: when it arrived (time.perf_counter)."""
        route = self._routes.get(name)
        found = route[1] if route is not None else None
        variants = found.variants + found.shadows if found else ()
        instances = next((len(v.addresses) for v in variants if v.name == variant), 1)
        total = time.perf_counter() - received
        self.metrics.record(name, variant, instances, status, model_seconds, total)

    def pick(
        self, name: str, target_variant: str | None, held: contextlib.ExitStack
    ) -> tuple[str, str, str]:
        """An instance to take an invocation of `name`: its address, log stream, variant. A
        serverless variant's invocation is counted against its MaxConcurrency until `held`
        is closed."""
        variant, address, stream = self._choose(name, target_variant)
        if variant.serverless is not None:
            slot = held.enter_context(self._serverless_held(name, variant))
            variant, address, stream = self._warm(name, variant, slot)
        return address, stream, variant.name

    def _choose(self, name: str, target_variant: str | None) -> tuple[Variant, str, str]:
        route = self._route(name)
        if route is None:
            raise InvocationError(
                "ValidationError", 400, f"Endpoint {name} of account {self.account_id} not found."
            )
        variant = self._variant(name, route, target_variant)
        if not variant.addresses:  # a serverless variant with no instance now
            return variant, "", ""
        index = random.randrange(len(variant.addresses))
        return variant, variant.addresses[index], variant.streams[index]

    def _dispatch(
        self,
        name: str,
        variant: Variant,
        address: str,
        stream: str,
        body: bytes,
        headers: dict[str, str],
    ) -> Answer:
        """To the container, a multi-model container's model (serving/multi_model.py), or
        through an inference pipeline's containers (serving/pipeline.py)."""
        model = variant.model
        try:
            chain = pipeline.chosen(model, name, headers.get(pipeline.TARGET_HOSTNAME))
            target = multi_model.target(model, name, headers.get(multi_model.TARGET_MODEL))
            if target is not None:
                folder = instance_folder(self.endpoints.settings, name, stream.split("/")[-1])
                fetcher = self._fetcher(variant, address, folder)
                return self.multi_models.invoke(
                    multi_model.Target(
                        folder, address, target, multi_model.url(model, target), fetcher
                    ),
                    lambda path: self._loaded_model(
                        name, address, stream, variant.name, body, headers, path
                    ),
                    lambda status, text: self.model_error(name, stream, status, text, variant.name),
                )
        except Refused as exc:
            raise InvocationError("ValidationError", 400, str(exc)) from None
        if not chain:
            return self._forward(name, address, stream, variant.name, body, headers)
        host = address.rpartition(":")[0]
        return pipeline.run(
            chain,
            lambda member, data, sent: self._forward(
                name,
                f"{host}:{member.port}",
                f"{stream}/{member.hostname}",
                variant.name,
                data,
                sent,
            ),
            body,
            headers,
        )

    def _fetcher(self, variant: Variant, address: str, folder: Path) -> multi_model.Fetcher:
        """Where a multi-model instance's models are fetched: here, or by its node's agent."""
        index = variant.addresses.index(address) if address in variant.addresses else -1
        held_by = variant.held_by[index] if 0 <= index < len(variant.held_by) else {}
        if held_by:
            return AgentFetcher(self.endpoints.settings, held_by)
        return multi_model.LocalFetcher(folder, self.endpoints.settings.store)

    def _loaded_model(
        self,
        name: str,
        address: str,
        stream: str,
        variant: str,
        body: bytes,
        headers: dict[str, str],
        path: str,
    ) -> Answer | None:
        """A multi-model container's answer; None when it does not have the model (404)."""
        try:
            return self._forward(name, address, stream, variant, body, headers, path)
        except InvocationError as exc:
            if exc.extra.get("OriginalStatusCode") == 404:
                return None
            raise

    def _route(self, name: str) -> Route | None:
        now = time.monotonic()
        known = self._routes.get(name)
        if known is not None and now - known[0] < ROUTE_SECONDS:
            return known[1]
        route = self.endpoints.route(name)
        self._routes[name] = (now, route)
        return route

    def _variant(self, name: str, route: Route, target: str | None) -> Variant:
        if target is not None:
            named = [v for v in route.variants if v.name == target]
            if not named:
                raise InvocationError(
                    "ValidationError",
                    400,
                    f"The variant {target} is not a production variant of endpoint {name}.",
                )
            candidates = [v for v in named if _can_take(v)]
        else:
            candidates = [v for v in route.variants if _can_take(v) and v.weight > 0]
        if route.status != "InService" and not any(v.addresses for v in candidates):
            raise InvocationError(
                "ValidationError",
                400,
                f"Endpoint {name} of account {self.account_id} is in status {route.status}; "
                "it takes invocations once InService.",
            )
        if not candidates:
            raise InvocationError(
                "ServiceUnavailable", 503, f"No instance of endpoint {name} is healthy now."
            )
        if len(candidates) == 1:
            return candidates[0]
        weights = [max(v.weight, 0.0) for v in candidates]
        if sum(weights) <= 0:
            return random.choice(candidates)
        return random.choices(candidates, weights)[0]

    def _forward(
        self,
        name: str,
        address: str,
        stream: str,
        variant: str,
        body: bytes,
        headers: dict[str, str],
        path: str = "/invocations",
    ) -> Answer:
        sent = {k: v for k, v in headers.items() if k in PASSED_HEADERS}
        started = time.perf_counter()
        try:
            response, data = self._exchange(address, body, sent, path)
        except (OSError, http.client.HTTPException) as exc:
            error = self.model_error(
                name, stream, 500, f"the model container did not answer: {exc}", variant
            )
            raise error from None
        return self._answered(
            name,
            stream,
            variant,
            response.status,
            data,
            response.getheader("Content-Type"),
            response.getheader(CUSTOM_ATTRIBUTES),
            time.perf_counter() - started,
        )

    def _answered(
        self,
        name: str,
        stream: str,
        variant: str,
        status: int,
        data: bytes,
        content_type: str | None,
        attributes: str | None,
        model_seconds: float,
    ) -> Answer:
        """The container's answer as the runtime gives it back (InvocationError: refused)."""
        if len(data) > MAX_PAYLOAD_BYTES:
            error = self.model_error(
                name,
                stream,
                500,
                f"the model container's answer is larger than the {MAX_PAYLOAD_BYTES} bytes "
                "an endpoint may answer",
                variant,
            )
            error.container_status, error.model_seconds = status, model_seconds
            raise error
        if not 200 <= status < 300:
            text = data.decode("utf-8", "replace")
            error = self.model_error(name, stream, status, text, variant)
            error.container_status, error.model_seconds = status, model_seconds
            raise error
        extra = {CUSTOM_ATTRIBUTES: attributes} if attributes else {}
        content_type = content_type or "application/octet-stream"
        return Answer(data, content_type, variant, extra, model_seconds)

    def _exchange(
        self, address: str, body: bytes, headers: dict[str, str], path: str
    ) -> tuple[http.client.HTTPResponse, bytes]:
        """POST `path` on a kept connection to `address`: the response and its body (at most
        one byte over the cap)."""
        connection = self.connections.take(address)
        try:
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read(MAX_PAYLOAD_BYTES + 1)
        except BaseException:
            connection.close()
            raise
        if response.isclosed() and not response.will_close:
            self.connections.give_back(address, connection)
        else:
            connection.close()  # asked to close, or more than the cap left unread
        return response, data

    def single(self, name: str, variant: Variant) -> bool:
        """Whether the variant's invocations go to one container as they are (the lane takes
        only those: openmaker/api/lane.py)."""
        return self._single(name, variant, {})

    def check_answer(
        self, name: str, stream: str, variant: str, status: int, data: bytes, took: float
    ) -> None:
        """InvocationError unless a container's answer may be passed on as it is."""
        self._answered(name, stream, variant, status, data, None, None, took)

    def model_error(
        self, name: str, stream: str, status: int, text: str, variant: str
    ) -> InvocationError:
        kind = "client" if 400 <= status < 500 else "server"
        group = log_group(name)
        arn = f"arn:aws:logs:{self.region}:{self.account_id}:log-group:{group}:log-stream:{stream}"
        message = (
            f"Received {kind} error ({status}) from {variant} with message "
            f'"{text[:ORIGINAL_MESSAGE_CHARS]}". See {group} in account {self.account_id} for '
            "more information."
        )
        return InvocationError(
            "ModelError",
            424,
            message,
            OriginalStatusCode=status,
            OriginalMessage=text[:ORIGINAL_MESSAGE_CHARS],
            LogStreamArn=arn,
        )


def _can_take(variant: Variant) -> bool:
    """Whether invocations may go to the variant: it has an instance in the route, or it is
    serverless (one is started for them)."""
    return bool(variant.addresses) or variant.serverless is not None
