"""The embedded S3 endpoint's public side: an HTTP/1.1 relay in front of `rclone serve s3`, which
listens on a unix socket in a folder only openmaker's user enters.

Each request's line and headers are parsed (httptools, llhttp's strict parser) and put to
`openmaker.api.s3_policy`; a refused request is answered here and never reaches rclone. Anything
else goes on as parsed: the same line and headers, the body as received (re-framed when chunked,
so that rclone cannot read a request other than the one checked), and rclone's answer comes back
byte for byte. One rclone connection per client connection keeps keep-alive, `Expect:
100-continue` and streaming (aws-chunked) uploads as they are; reading stops on either side while
the other cannot take more.

Run as `python -m openmaker.api.s3_front HOST PORT SOCKET HOME STORE` by
`openmaker.api.s3_endpoint`: its own process, so that the relay and the API do not share a
Python interpreter.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path

import httptools

from openmaker.api.s3_policy import Policy, Refusal, Request, bad_request

MAX_HEAD_BYTES = 64 * 1024
# Large buffers: few wake-ups per megabyte.
HIGH_WATER = 4 * 1024 * 1024
SOCKET_BUFFER = 4 * 1024 * 1024
# After a refusal answered before its body arrived: how long to read and drop what still comes
# (closing at once could lose the answer to a reset).
LINGER_SECONDS = 2.0


class _Side(asyncio.Protocol):
    """Flow control shared by both sides: when this side's transport is full, the other stops
    reading."""

    transport: asyncio.Transport | None = None
    peer: _Side | None = None

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class Upstream(_Side):
    """rclone's side: its bytes go to the client unchanged."""

    def __init__(self, client: Client) -> None:
        self.peer = client
        self.client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        self.client.send(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class Client(_Side):
    """The client's side: requests parsed, checked, then relayed or answered."""

    def __init__(self, policy: Policy, upstream_path: str) -> None:
        self.policy = policy
        self.upstream_path = upstream_path
        self.upstream: Upstream | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.closing = False
        self._reset()

    def _reset(self) -> None:
        self.url = bytearray()
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.in_body = False
        self.forwarding = False
        self.chunked = False
        self.trailers: list[tuple[bytes, bytes]] = []
        self.refused: Refusal | None = None
        self.method = ""

    # --- the connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER)
        _tune(transport)
        transport.pause_reading()  # until rclone's side is there
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_unix_connection(
                lambda: Upstream(self), self.upstream_path
            )
        except OSError:
            self.close()
            return
        if self.closing:
            if upstream.transport is not None:
                upstream.transport.close()
            return
        self.upstream = upstream
        self.peer = upstream
        assert upstream.transport is not None
        _tune(upstream.transport)
        assert self.transport is not None
        self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._answer(bad_request("This endpoint does not upgrade connections."), close=True)
        except httptools.HttpParserError:
            if not self.closing:
                self._answer(bad_request("The request is not well-formed HTTP/1.1."), close=True)

    def eof_received(self) -> bool | None:
        upstream = self.upstream.transport if self.upstream is not None else None
        if upstream is not None and upstream.can_write_eof():
            upstream.write_eof()  # rclone still answers what it has been asked
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()  # after what is buffered has gone out

    def _forward(self, data: bytes) -> None:
        assert self.upstream is not None and self.upstream.transport is not None
        self.upstream.transport.write(data)

    # --- httptools' callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reset()

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value))
        if self.in_body:
            self.trailers.append((name, value))
        else:
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_body = True
        self.method = self.parser.get_method().decode("latin-1")
        names = [name.lower() for name, _ in self.headers]
        transfer = [v.strip().lower() for n, v in self.headers if n.lower() == b"transfer-encoding"]
        self.chunked = bool(transfer)
        if transfer and (transfer != [b"chunked"] or b"content-length" in names):
            self.refused = bad_request("Transfer-Encoding must be `chunked` alone.")
        elif names.count(b"content-length") > 1:
            self.refused = bad_request("The request has more than one Content-Length.")
        else:
            request = Request(
                self.method,
                self.url.decode("utf-8", "surrogateescape"),
                [
                    (n.decode("latin-1").lower(), v.decode("utf-8", "surrogateescape"))
                    for n, v in self.headers
                ],  # fmt: skip,
            )
            self.refused = self.policy.refusal(request)
        if self.refused is None:
            self.forwarding = True
            self._forward(self._head())
            return
        expects = any(n.lower() == b"expect" for n, _ in self.headers)
        if expects and (self.chunked or self._content_length() > 0):
            # The client waits for a go-ahead that will not come: answer now, then close.
            self._answer(self.refused, close=True)

    def on_body(self, body: bytes) -> None:
        if not self.forwarding:
            return
        if self.chunked:
            self._forward(b"%x\r\n%b\r\n" % (len(body), body))
        else:
            self._forward(body)

    def on_message_complete(self) -> None:
        if self.forwarding and self.chunked:
            trailers = b"".join(n + b": " + v + b"\r\n" for n, v in self.trailers)
            self._forward(b"0\r\n" + trailers + b"\r\n")
        elif self.refused is not None and not self.closing:
            self._answer(self.refused, close=not self.parser.should_keep_alive())
        self.in_body = False

    # --- helpers ------------------------------------------------------------------------------

    def _head(self) -> bytes:
        lines = [b"%s %s HTTP/%s" % (self.method.encode(), bytes(self.url),
                                     self.parser.get_http_version().encode())]  # fmt: skip
        lines += [name + b": " + value for name, value in self.headers]
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def _content_length(self) -> int:
        for name, value in self.headers:
            if name.lower() == b"content-length" and value.strip().isdigit():
                return int(value)
        return 0

    def _count(self, size: int) -> None:
        self.head_bytes += size
        if self.head_bytes > MAX_HEAD_BYTES:
            self._answer(bad_request("The request's headers are too large."), close=True)
            raise httptools.HttpParserError("headers too large")

    def _answer(self, refusal: Refusal, close: bool) -> None:
        assert self.transport is not None
        self.transport.write(refusal.response(self.method == "HEAD", close))
        if close:
            self.closing = True
            if self.upstream is not None and self.upstream.transport is not None:
                self.upstream.transport.close()
            if self.transport.can_write_eof():
                self.transport.write_eof()
            asyncio.get_running_loop().call_later(LINGER_SECONDS, self.transport.close)


def _tune(transport: asyncio.Transport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def serve(host: str, port: int, upstream_path: str, home: Path, store: Path) -> None:
    policy = Policy(home, store)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Client(policy, upstream_path), host, port, reuse_address=True, backlog=1024
    )
    stop = asyncio.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    host, port, upstream_path, home, store = sys.argv[1:6]
    os.umask(0o077)
    asyncio.run(serve(host, int(port), upstream_path, Path(home), Path(store)))


if __name__ == "__main__":
    main()
