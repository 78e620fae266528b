"""InvokeEndpoint answered in the HTTP protocol itself, without the ASGI layer between.

uvicorn's request cycle (the scope, a task running the application, the receive and send
messages, the checks on every header sent, a keep-alive timer) costs the server about 60 µs of
CPU a request, as much as the SigV4 check and the hop to the container together
(bench/invoke.py). A plain invocation is therefore taken here as soon as its head is parsed: its
body gathered as it comes, the runtime API's own handler (`Invocations.answer`, the checks and
answers of openmaker/api/runtime.py) awaited in a task, its answer written in one piece.

Only the plain case comes here: POST of a body of announced length (at most the runtime's
limit) to `/endpoints/<name>/invocations` (no percent-escapes), HTTP/1.1 without `Expect`,
nothing else in flight on the connection. Anything else (chunked bodies, oversized or
unannounced lengths, pipelined requests, odd paths) goes through uvicorn and the same handler
as an ASGI application, which refuses or answers it as before. While an invocation is answered
here, `_InFlight` stands in for uvicorn's cycle, so that uvicorn's own bookkeeping holds: a
request pipelined behind it waits for it, shutdown waits for it, a client that goes away is
noticed.

A connection whose invocation was answered here is offered to the lane (openmaker/api/lane.py),
which answers the plain invocations that follow in C; one it gives back comes here again with
what it had read (`pending`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import cast

import httptools
from uvicorn.protocols.http.httptools_impl import HEADER_RE, HEADER_VALUE_RE, STATUS_LINE

from openmaker.api.coalesce import CoalescingHttpToolsProtocol, CoalescingTransport
from openmaker.api.lane import Lane
from openmaker.api.runtime import MAX_BODY_BYTES, Invocations

PREFIX, SUFFIX = b"/endpoints/", b"/invocations"
log = logging.getLogger("openmaker.api")
_INTERNAL = (
    500,
    [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"21")],
    b"Internal Server Error",
)


class _InFlight:
    """What uvicorn reads and sets of a request cycle, for an invocation answered here."""

    def __init__(self, keep_alive: bool) -> None:
        self.keep_alive = keep_alive
        self.response_complete = False
        self.disconnected = False
        self.body = bytearray()
        self.more_body = True
        self.message_event = self  # uvicorn sets it when the client goes away

    def set(self) -> None:
        pass


class _Request:
    """An invocation's head, and its body as it arrives."""

    def __init__(
        self, cycle: _InFlight, raw_path: bytes, query: bytes, name: str, length: int
    ) -> None:
        self.cycle, self.raw_path, self.query, self.name = cycle, raw_path, query, name
        self.length = length
        self.received = time.perf_counter()  # OverheadLatency counts from here
        self.chunks: list[bytes] = []
        self.begun = 0  # requests begun on the connection when this one was read whole


def rendered(
    status: int,
    head: Iterable[tuple[bytes, bytes]],
    data: bytes,
    defaults: Iterable[tuple[bytes, bytes]],
    keep_alive: bool = True,
) -> bytes:
    """An answer's bytes: status line, the server's default headers, `head`, the body."""
    lines = [STATUS_LINE[status]]
    for name, value in (*defaults, *head):
        lines += (name, b": ", value, b"\r\n")
    if not keep_alive:
        lines.append(b"connection: close\r\n")
    lines += (b"\r\n", data)
    return b"".join(lines)


def protocol_for(
    invocations: Invocations, lane: Lane | None = None
) -> type[CoalescingHttpToolsProtocol]:
    """The API's HTTP protocol, with plain invocations answered by `invocations`, and their
    connections offered to `lane` once answered."""

    class InvokingProtocol(CoalescingHttpToolsProtocol):
        _reading: _Request | None = None
        _begun = 0
        pending = b""  # what the lane had read of a connection it gave back

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]
            if self.pending:
                pending, self.pending = self.pending, b""
                self.data_received(pending)

        def on_message_begin(self) -> None:
            self._begun += 1
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            request = self._plain_invocation()
            if request is None:
                super().on_headers_complete()
                return
            self.scope["method"] = "POST"
            self.cycle = request.cycle  # type: ignore[assignment]
            self._reading = request

        def on_body(self, body: bytes) -> None:
            if self._reading is None:
                super().on_body(body)
            else:
                self._reading.chunks.append(body)

        def on_message_complete(self) -> None:
            request = self._reading
            if request is None:
                super().on_message_complete()
                return
            self._reading = None
            request.begun = self._begun
            chunks = request.chunks
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            task = self.loop.create_task(self._answer(request, body, list(self.headers)))
            task.add_done_callback(self.tasks.discard)
            self.tasks.add(task)

        def _plain_invocation(self) -> _Request | None:
            parser = self.parser
            if (
                parser.get_method() != b"POST"
                or parser.get_http_version() != "1.1"
                or parser.should_upgrade()
                or self.expect_100_continue
                or (self.cycle is not None and not self.cycle.response_complete)
            ):
                return None
            length = None
            for name, value in self.headers:
                if name == b"transfer-encoding":
                    return None
                if name == b"content-length":
                    if length is not None or not value.isdigit():
                        return None
                    length = int(value)
            if length is None or length > MAX_BODY_BYTES:
                return None
            url = httptools.parse_url(self.url)
            path = url.path
            endpoint = path[len(PREFIX) : -len(SUFFIX)]
            if (
                not path.startswith(PREFIX)
                or not path.endswith(SUFFIX)
                or len(path) <= len(PREFIX) + len(SUFFIX)
                or b"/" in endpoint
                or b"%" in path
                or not endpoint.isascii()
            ):
                return None
            cycle = _InFlight(parser.should_keep_alive())
            return _Request(cycle, path, url.query or b"", endpoint.decode("ascii"), length)

        async def _answer(
            self, request: _Request, body: bytes, headers: list[tuple[bytes, bytes]]
        ) -> None:
            cycle = request.cycle
            try:
                status, head, data = await invocations.answer(
                    "POST",
                    request.raw_path,
                    request.query,
                    headers,
                    request.name,
                    body,
                    request.received,
                )
                # Both patterns are sets of characters: searched for in all names (values) at
                # once, as in each.
                names, values = b"".join(n for n, _ in head), b"".join(v for _, v in head)
                if HEADER_VALUE_RE.search(values) or HEADER_RE.search(names):
                    raise ValueError(f"a header of the answer cannot be sent: {head!r}")
            except Exception:
                log.exception("an invocation failed")
                status, head, data = _INTERNAL
                cycle.keep_alive = False
            cycle.response_complete = True
            if cycle.disconnected or self.transport.is_closing():
                return
            answer = rendered(
                status, head, data, self.server_state.default_headers, cycle.keep_alive
            )
            transport = self.transport
            if isinstance(transport, CoalescingTransport):
                transport.write_whole(answer)
            else:
                transport.write(answer)
            if not cycle.keep_alive:
                self.transport.close()
            self.on_response_complete()
            if (
                lane is not None
                and status == 200
                and cycle.keep_alive
                and cast(object, self.cycle) is cycle  # nothing pipelined behind it has begun
                and not self.pipeline
                and self._begun == request.begun  # nor begun arriving
            ):
                lane.offer(request.name, self)

    return InvokingProtocol
