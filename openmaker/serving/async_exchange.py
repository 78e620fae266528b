"""POST /invocations to an instance from the server's event loop, on kept-alive connections.

The runtime API's InvokeEndpoint is served on the event loop; handing each invocation to a
thread and back costs two thread wake-ups, which under load cost more than the exchange itself
(bench/invoke.py). Here the exchange is a protocol on the loop: the request written at once,
the answer parsed by httptools (uvicorn's parser) as it arrives. Connections are kept per
address as in serving/pool.py: one whose answer was read whole goes back, one idle for
IDLE_SECONDS is closed (the endpoint's worker stops a retired instance once none is open).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import cast

import httptools

from openmaker.serving import liveness
from openmaker.serving.pool import IDLE_SECONDS, KEPT_PER_ADDRESS


class ExchangeError(Exception):
    """The container did not answer (the message says how)."""


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes  # longer than `cap` when the answer is (the rest is not read)


class _Connection(asyncio.Protocol):
    """One connection to a container, its answers parsed as they come."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self._begin(0)

    def _begin(self, cap: int) -> None:
        self.parser: httptools.HttpResponseParser | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []
        self.size, self.cap = 0, cap
        self.headers_done = self.complete = self.keep_alive = False

    # -- the exchange ---------------------------------------------------------------------

    async def exchange(
        self, head: bytes, body: bytes, cap: int, timeout: float
    ) -> tuple[Reply, bool]:
        """The answer to one request, and whether the connection may be used again."""
        assert self.transport is not None
        self._begin(cap)
        self.parser = httptools.HttpResponseParser(self)
        loop = asyncio.get_running_loop()
        waiter = self.waiter = loop.create_future()
        self.transport.write(head + body)
        # A timer rather than asyncio.wait_for, which wraps the wait in a task of its own (a
        # cost on every invocation).
        timer = loop.call_later(timeout, self._fail, f"no answer within {timeout:g} seconds")
        try:
            await waiter
        finally:
            timer.cancel()
        parser = self.parser
        reply = Reply(parser.get_status_code(), self.headers, b"".join(self.chunks))
        reusable = self.complete and self.keep_alive and not self.lost and self.size <= cap
        self.parser = self.waiter = None
        return reply, reusable

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is not a subclass of asyncio's, so no isinstance).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.parser is None:  # nothing was asked: not a connection to reuse
            self.lost = True
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(f"its answer is not HTTP: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is None or self.waiter.done():
            return
        # An answer with neither a length nor chunks ends with its connection.
        delimited = "content-length" in self.headers or "transfer-encoding" in self.headers
        if self.headers_done and not delimited:
            self.waiter.set_result(None)
        else:
            self._fail(f"the connection closed before the answer ended ({exc or 'EOF'})")

    # -- httptools' callbacks -----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        if self.size <= self.cap:  # the piece that goes over is kept: it shows the excess
            self.chunks.append(body)
        self.size += len(body)
        if self.size > self.cap and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)  # over the cap: what was read is enough to refuse it
            self.close()

    def on_message_complete(self) -> None:
        # Asked now: the parser forgets it once the message is done.
        assert self.parser is not None
        self.complete, self.keep_alive = True, self.parser.should_keep_alive()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _fail(self, why: str) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ExchangeError(why))
        self.close()


class AsyncConnections:
    """Kept connections per address, used from one event loop."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._idle: dict[str, list[tuple[float, _Connection]]] = {}
        self._reaper: asyncio.Task[None] | None = None

    async def post(
        self, address: str, path: str, headers: dict[str, str], body: bytes, cap: int
    ) -> Reply:
        """POST `body` to `path` at `address` (host:port); ExchangeError: no answer."""
        if any(c in v for v in headers.values() for c in "\r\n\0"):
            raise ExchangeError("a header value holds a line break")  # as http.client refuses
        connection = await self._take(address)
        host = address.rpartition(":")[0]
        lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            reply, reusable = await connection.exchange(head, body, cap, self.timeout)
        except BaseException:
            connection.close()
            raise
        if reusable:
            self._give_back(address, connection)
        else:
            connection.close()
        return reply

    async def _take(self, address: str) -> _Connection:
        idle = self._idle.get(address)
        while idle:
            _, connection = idle.pop()
            if not connection.lost:
                return connection
        host, _, port = address.rpartition(":")
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await asyncio.wait_for(
                loop.create_connection(_Connection, host, int(port)), self.timeout
            )
        except (OSError, TimeoutError) as exc:
            raise ExchangeError(str(exc) or type(exc).__name__) from None
        sock = transport.get_extra_info("socket")
        if sock is not None:
            liveness.watch(sock)
        return protocol

    def _give_back(self, address: str, connection: _Connection) -> None:
        idle = self._idle.setdefault(address, [])
        if len(idle) >= KEPT_PER_ADDRESS:
            connection.close()
            return
        idle.append((time.monotonic(), connection))
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        while self._idle:
            await asyncio.sleep(IDLE_SECONDS / 4)
            limit = time.monotonic() - IDLE_SECONDS
            for address in list(self._idle):
                kept = []
                for since, connection in self._idle[address]:
                    if since <= limit or connection.lost:
                        connection.close()
                    else:
                        kept.append((since, connection))
                if kept:
                    self._idle[address] = kept
                else:
                    del self._idle[address]
