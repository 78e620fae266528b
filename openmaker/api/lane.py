"""InvokeEndpoint's lane: the plain case answered in C (openmaker/api/_lane.c) on connections
that have already carried an invocation.

Python answers a connection's first invocation (openmaker/api/invoke_front.py); if it was a
plain one to an endpoint the lane has a route for, the connection is handed to the lane, which
answers what follows without the interpreter: that is what a client keeping its connection
alive (boto3, the SDKs) sends. The lane gives back to Python, with the connection, any request
it does not take whole (see _lane.c), and asks Python for the runtime's error when a container
does not answer with a 2xx: every refusal and error keeps one spelling, Python's.

Routes: an endpoint is in the lane while it is InService, every variant is one container on
instances (not serverless, not a pipeline, not multi-model), it has no shadow variant and it
captures no data; its route
is read again every REFRESH_SECONDS, as the Python path reads its own every second. The lane's
successes are counted in the endpoint's metrics at the same pace.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any, Protocol

from openmaker.api.credentials import Credentials
from openmaker.api.runtime import error_parts, request_id_now
from openmaker.serving.pool import IDLE_SECONDS
from openmaker.serving.proxy import InvocationError, Invoker

try:
    from openmaker.api import _lane
except ImportError:  # not built (no C compiler or OpenSSL headers): Python answers all
    _lane = None  # type: ignore[assignment]

REFRESH_SECONDS = 0.5
log = logging.getLogger("openmaker.api")
# (variant, weight, [(host, port, log stream)]) per variant, as _lane.Lane.set_route takes it.
LaneRoute = list[tuple[str, float, list[tuple[str, int, str]]]]
Render = Callable[[int, list[tuple[bytes, bytes]], bytes], bytes]


class Offering(Protocol):
    """What the lane reads of the HTTP protocol offering it a connection (uvicorn's)."""

    transport: asyncio.Transport
    config: Any
    server_state: Any
    app_state: Any


def available() -> bool:
    return _lane is not None


class Lane:
    def __init__(
        self,
        invoker: Invoker,
        credentials: Credentials,
        region: str,
        keep_alive: float,
        render: Render,
    ) -> None:
        """`render(status, head, body)`: an answer's bytes as the server writes them."""
        assert _lane is not None
        self.invoker, self.render = invoker, render
        self.native = _lane.Lane(
            credentials.access_key_id,
            credentials.secret_access_key,
            region,
            invoker.invocation_seconds,
            keep_alive,
            IDLE_SECONDS,
            self._error,
        )
        self._wanted: set[str] = set()  # endpoints whose routes are kept up to date
        self._routed: set[str] = set()  # those the lane has a route for now
        self._announced: set[str] = set()  # those whose first handed-over connection was logged
        self._instances: dict[tuple[str, str], int] = {}  # per variant, for the metrics
        self._resume: Callable[[], Any] | None = None  # a new protocol for a given-back one
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._refresher = threading.Thread(target=self._refresh_loop, daemon=True)
        self._refresher.start()

    def close(self) -> None:
        self._stop.set()
        self._refresher.join()
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.native.fileno())
        self.native.close()
        self._drain()

    # -- connections ----------------------------------------------------------------------

    def offer(self, endpoint: str, protocol: Offering) -> None:
        """The connection just answered an invocation of `endpoint`, and nothing else is under
        way on it: the lane takes it if it routes that endpoint (else it starts to)."""
        if endpoint not in self._routed:
            self._wanted.add(endpoint)
            return
        transport = protocol.transport
        sock = transport.get_extra_info("socket")
        if (
            sock is None
            or transport.get_extra_info("sslcontext") is not None  # the lane speaks no TLS
            or transport.is_closing()
            or transport.get_write_buffer_size()  # the lane would write past the answer
        ):
            return
        if self._resume is None:
            made: Callable[..., Any] = type(protocol)
            self._resume = functools.partial(
                made,
                config=protocol.config,
                server_state=protocol.server_state,
                app_state=protocol.app_state,
            )
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self.native.fileno(), self._given_back)
        if endpoint not in self._announced:
            self._announced.add(endpoint)
            log.info("the invocation lane answers %s's kept connections", endpoint)
        fd = os.dup(sock.fileno())
        transport.pause_reading()
        transport.close()  # its descriptor only: the duplicate keeps the connection open
        try:
            self.native.adopt(fd)
        except Exception:
            os.close(fd)
            raise

    def _given_back(self) -> None:
        """Connections the lane gave back: Python reads them on, from what they had sent."""
        assert self._loop is not None and self._resume is not None
        for fd, pending in self.native.returned():
            self._loop.create_task(self._take(socket.socket(fileno=fd), pending))

    async def _take(self, sock: socket.socket, pending: bytes) -> None:
        assert self._loop is not None and self._resume is not None
        resume = self._resume

        def resumed() -> Any:
            protocol = resume()
            protocol.pending = pending  # fed to it once connected (invoke_front.py)
            return protocol

        sock.setblocking(False)
        try:
            await self._loop.connect_accepted_socket(resumed, sock)
        except OSError:
            sock.close()

    # -- errors and metrics -----------------------------------------------------------------

    def _error(
        self,
        endpoint: str,
        variant: str,
        stream: str,
        status: int,
        body: bytes,
        failure: str | None,
        model_seconds: float,
        total_seconds: float,
    ) -> bytes:
        """The runtime's answer to an exchange with a container that gave no 2xx to pass on
        (called by the lane's thread): `failure` says why there was no answer at all."""
        invoker = self.invoker
        container_status: int | None = None
        took: float | None = None
        if failure is not None:
            error = invoker.model_error(
                endpoint, stream, 500, f"the model container did not answer: {failure}", variant
            )
        else:
            container_status, took = status, model_seconds
            try:
                invoker.check_answer(endpoint, stream, variant, status, body, model_seconds)
                error = invoker.model_error(endpoint, stream, 500, "no answer to pass on", variant)
            except InvocationError as exc:
                error = exc
        instances = self._instances.get((endpoint, variant), 1)
        invoker.metrics.record(endpoint, variant, instances, container_status, took, total_seconds)
        code, head, data = error_parts(
            error.code, error.status, error.message, request_id_now(), error.extra
        )
        return self.render(code, head, data)

    def _drain(self) -> None:
        record = self.invoker.metrics.record_answered
        for endpoint, variant, count, model, overhead in self.native.drain():
            instances = self._instances.get((endpoint, variant), 1)
            record(endpoint, variant, instances, count, model, overhead)

    # -- routes ---------------------------------------------------------------------------

    def _refresh_loop(self) -> None:
        while not self._stop.wait(REFRESH_SECONDS):
            try:
                self._drain()
                for endpoint in list(self._wanted):
                    self._refresh(endpoint)
            except Exception:
                log.exception("the invocation lane's routes could not be read")

    def _refresh(self, endpoint: str) -> None:
        route = self.route(endpoint)
        self.native.set_route(endpoint, route)
        if route is None:
            self._routed.discard(endpoint)
            self._wanted.discard(endpoint)  # until Python answers it again
            return
        for variant, _, instances in route:
            self._instances[(endpoint, variant)] = len(instances)
        self._routed.add(endpoint)

    def route(self, endpoint: str) -> LaneRoute | None:
        """The endpoint's route as the lane takes it; None: the lane leaves it to Python."""
        invoker = self.invoker
        found = invoker.endpoints.route(endpoint)
        if (
            found is None
            or found.status != "InService"
            or found.shadows  # copies to a shadow are sent from Python
            or invoker.capture.enabled(endpoint)
        ):
            return None
        route: LaneRoute = []
        for variant in found.variants:
            if variant.serverless is not None or not invoker.single(endpoint, variant):
                return None
            instances = []
            for address, stream in zip(variant.addresses, variant.streams, strict=True):
                host, _, port = address.rpartition(":")
                instances.append((host, int(port), stream))
            route.append((variant.name, float(variant.weight), instances))
        return route
