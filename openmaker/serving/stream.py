"""InvokeEndpointWithResponseStream: the container's answer relayed part by part as it comes.

The container answers `POST /invocations` (chunked, or with a length); every piece read is
passed on at once as a `PayloadPart` event. A status other than 2xx is a ModelError before
the stream begins, as for InvokeEndpoint. Once it has begun, a stream that has not ended
`limit` seconds after the request (60 s, SageMaker's, unless OPENMAKER_INVOCATION_SECONDS says)
is cut with a `ModelStreamError` (`ModelInvocationTimeExceeded`); one the container breaks off
ends with a `ModelStreamError` (`StreamBroken`).

A serverless variant's stream counts against its MaxConcurrency until it ends. Each stream
counts in the endpoint's invocation metrics as an InvokeEndpoint does once it ends:
its ModelLatency runs from the request sent to the container's last part, as SageMaker defines
ModelLatency (sending the request and fetching the response); a stream cut or broken off counts
as a 5xx (the container did not finish its answer), one the client left as answered.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from openmaker.serving.eventstream import payload_part, stream_error
from openmaker.serving.liveness import InstanceConnection
from openmaker.serving.proxy import (
    CUSTOM_ATTRIBUTES,
    ORIGINAL_MESSAGE_CHARS,
    PASSED_HEADERS,
    Invoker,
)

# Each read passes on at most this much.
PART_BYTES = 64 * 1024


@dataclass
class Sent:
    """Where an invocation went, for its metrics: its endpoint, and when it arrived and was
    sent to the container (time.perf_counter)."""

    invoker: Invoker
    endpoint: str
    received: float
    sent: float


@dataclass
class Stream:
    """A container's answer that has begun: where it comes from and its parts, as events."""

    variant: str
    content_type: str
    headers: dict[str, str]
    connection: http.client.HTTPConnection
    response: http.client.HTTPResponse
    deadline: float
    sent: Sent
    held: contextlib.ExitStack  # a serverless variant's concurrency, given back at the end
    measured: bool = False
    # A client that leaves closes the stream from another thread than the one reading it.
    lock: threading.Lock = field(default_factory=threading.Lock)

    def events(self) -> Iterator[bytes]:
        try:
            while True:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    yield self._timed_out()
                    return
                sock = self.connection.sock
                if sock is not None:
                    sock.settimeout(left)
                try:
                    data = self.response.read1(PART_BYTES)
                except TimeoutError:
                    yield self._timed_out()
                    return
                except (OSError, http.client.HTTPException) as exc:
                    self._measure(None)
                    yield stream_error(
                        "ModelStreamError",
                        f"The model container broke off its response: {exc}",
                        "StreamBroken",
                    )
                    return
                if not data:
                    self._measure(self.response.status)
                    return
                yield payload_part(data)
        finally:
            self.close()

    def _measure(self, status: int | None) -> None:
        """Count the invocation, once: `status` None when the container did not finish."""
        with self.lock:
            if self.measured:
                return
            self.measured = True
        sent = self.sent
        model_seconds = time.perf_counter() - sent.sent
        sent.invoker.measure(sent.endpoint, self.variant, status, model_seconds, sent.received)

    def _timed_out(self) -> bytes:
        self._measure(None)
        return stream_error(
            "ModelStreamError",
            f"Your model {self.variant} did not complete sending the inference response in the "
            "allotted time.",
            "ModelInvocationTimeExceeded",
        )

    def close(self) -> None:
        self._measure(self.response.status)  # the client left before the end
        sock = self.connection.sock
        if sock is not None:  # a read blocked in another thread ends too
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.connection.close()
        self.held.close()


def open_stream(
    invoker: Invoker,
    name: str,
    body: bytes,
    headers: dict[str, str],
    target_variant: str | None,
    limit: float,
    received: float | None = None,
) -> Stream:
    """Send the request to an instance and read the answer's head (InvocationError: none to
    stream); `received`: when the request arrived (time.perf_counter)."""
    received = time.perf_counter() if received is None else received
    held = contextlib.ExitStack()
    try:
        return _open(invoker, name, body, headers, target_variant, limit, received, held)
    except BaseException:
        held.close()
        raise


def _open(
    invoker: Invoker,
    name: str,
    body: bytes,
    headers: dict[str, str],
    target_variant: str | None,
    limit: float,
    received: float,
    held: contextlib.ExitStack,
) -> Stream:
    address, log_stream, variant = invoker.pick(name, target_variant, held)
    deadline = time.monotonic() + limit
    host, _, port = address.rpartition(":")
    connection = InstanceConnection(host, int(port), timeout=limit)
    started = time.perf_counter()
    try:
        sent = {k: v for k, v in headers.items() if k in PASSED_HEADERS}
        connection.request("POST", "/invocations", body=body, headers=sent)
        response = connection.getresponse()
    except (OSError, http.client.HTTPException) as exc:
        connection.close()
        invoker.measure(name, variant, None, None, received)
        raise invoker.model_error(
            name, log_stream, 500, f"the model container did not answer: {exc}", variant
        ) from None
    if not 200 <= response.status < 300:
        try:
            text = response.read(ORIGINAL_MESSAGE_CHARS * 4).decode("utf-8", "replace")
        except (OSError, http.client.HTTPException):
            text = ""
        connection.close()
        model_seconds = time.perf_counter() - started
        invoker.measure(name, variant, response.status, model_seconds, received)
        raise invoker.model_error(name, log_stream, response.status, text, variant)
    content_type = response.getheader("Content-Type") or "application/octet-stream"
    attributes = response.getheader(CUSTOM_ATTRIBUTES)
    extra = {CUSTOM_ATTRIBUTES: attributes} if attributes else {}
    sent_to = Sent(invoker, name, received, started)
    return Stream(variant, content_type, extra, connection, response, deadline, sent_to, held)
