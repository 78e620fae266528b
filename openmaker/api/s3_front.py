"""The embedded S3 endpoint's public side: an HTTP/1.1 relay in front of `rclone serve s3`, which
listens on a unix socket in a folder only openmaker's user enters.

Each request's line and headers are parsed (httptools: llhttp's strict parser) and put to
`openmaker.api.s3_policy`; a refused request is answered here and never reaches rclone. Anything
else goes on as parsed: the same line and headers, then the body. A body of known length moves
by `splice(2)` (`openmaker.api.s3_pump`) and so does every byte of rclone's answers, which come
back unchanged: the relay costs about what the direct connection would. A chunked body is
re-framed as parsed (rare: S3 wants a length), so rclone never reads a request other than the
one checked. One rclone connection per client connection keeps keep-alive, `Expect:
100-continue` and aws-chunked uploads as they are; either side stops being read while the other
cannot take more.

Run as `python -m openmaker.api.s3_front HOST PORT SOCKET HOME STORE` by
`openmaker.api.s3_endpoint`: a process of its own, so that the relay and the API do not share an
interpreter. It holds no secret: rclone checks every signature.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
import sys
from pathlib import Path

import httptools

from openmaker.api.s3_policy import MAX_HELD_BODY, Hold, Policy, Refusal, Request, bad_request
from openmaker.api.s3_pump import Pump

MAX_HEAD_BYTES = 64 * 1024
RECV_SIZE = 256 * 1024
# A body with more still to come goes by splice; a small rest is read like the head (switching
# costs more than copying it).
SPLICE_FROM = 256 * 1024
SOCKET_BUFFER = 4 * 1024 * 1024
# After a refusal answered before its body arrived: how long to read and drop what still comes
# (closing at once could lose the answer to a reset).
LINGER_SECONDS = 2.0
ACCEPT_PAUSE_SECONDS = 0.1


class Relay:
    """One client connection and its own connection to rclone."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        policy: Policy,
        client: socket.socket,
        upstream: socket.socket,
    ) -> None:
        self.loop = loop
        self.policy = policy
        self.client = client
        self.upstream = upstream
        self.requests = Pump(loop, client, upstream, self._client_ended, self.close)
        self.requests.on_drained = self._resume
        try:
            self.responses = Pump(loop, upstream, client, self._upstream_ended, self.close)
        except OSError:
            self.requests.close()
            raise
        self.parser = httptools.HttpRequestParser(self)
        self.parsing = False  # the relay reads the client itself (request heads)
        self.splicing = False  # the requests pump moves a body
        self.lingering = False  # answered and closing: what the client still sends is dropped
        self.client_done = False
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        self.url = bytearray()
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.in_body = False
        self.forwarding = False
        self.chunked = False
        self.body_left = 0
        self.trailers: list[tuple[bytes, bytes]] = []
        self.refused: Refusal | None = None
        self.held: Hold | None = None
        self.held_body = bytearray()
        self.method = ""

    def start(self) -> None:
        self.responses.take(None)
        self._read_client()

    # --- the connection ---------------------------------------------------------------------

    def _read_client(self) -> None:
        if not self.parsing and not self.closed:
            self.loop.add_reader(self.client.fileno(), self._client_readable)
            self.parsing = True

    def _pause_client(self) -> None:
        if self.parsing:
            self.loop.remove_reader(self.client.fileno())
            self.parsing = False

    def _client_readable(self) -> None:
        try:
            data = self.client.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        if not data:
            self._pause_client()
            self._client_ended()
            return
        if self.lingering:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._answer(bad_request("This endpoint does not upgrade connections."), close=True)
        except httptools.HttpParserError:
            if not self.lingering:
                self._answer(bad_request("The request is not well-formed HTTP/1.1."), close=True)
        if self.closed or self.lingering:
            return
        if self.forwarding and not self.chunked and self.body_left > SPLICE_FROM:
            # The rest of this body goes by splice; the next request gets a parser of its own.
            self._pause_client()
            self.splicing = True
            self.parser = httptools.HttpRequestParser(self)
            self.requests.take(self.body_left, self._body_spliced)
        elif self.requests.busy:
            self._pause_client()  # rclone is slower than the client: wait for room

    def _body_spliced(self) -> None:
        self.splicing = False
        self._reset()
        self._resume()

    def _resume(self) -> None:
        if self.client_done:
            self._client_ended()
        elif not self.splicing and not self.requests.busy:
            self._read_client()

    def _client_ended(self) -> None:
        """The client sends no more: rclone is told once it has everything sent before."""
        self.client_done = True
        if self.lingering:
            self.close()
        elif not self.requests.busy and not self.requests.in_pipe:
            with contextlib.suppress(OSError):
                self.upstream.shutdown(socket.SHUT_WR)

    def _upstream_ended(self) -> None:
        if not self.lingering:
            self.close()
            return
        with contextlib.suppress(OSError):
            self.client.shutdown(socket.SHUT_WR)
        self._read_client()  # and drop, until the client closes or time is up
        self.loop.call_later(LINGER_SECONDS, self.close)

    def close(self) -> None:
        if self.closed:
            return
        self._pause_client()
        self.closed = True
        self.requests.close()
        self.responses.close()
        self.client.close()
        self.upstream.close()

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
        self.body_left = self._content_length()
        if transfer and (transfer != [b"chunked"] or b"content-length" in names):
            self.refused = bad_request("Transfer-Encoding must be `chunked` alone.")
        elif names.count(b"content-length") > 1:
            self.refused = bad_request("The request has more than one Content-Length.")
        else:
            request = Request(
                self.method,
                self.url.decode("utf-8", "surrogateescape"),
                [(n.decode("latin-1").lower(), v.decode("utf-8", "surrogateescape"))
                 for n, v in self.headers],
            )  # fmt: skip
            verdict = self.policy.refusal(request)
            if isinstance(verdict, Hold):
                self._hold(verdict)
                return
            self.refused = verdict
        if self.refused is None:
            self.forwarding = True
            self.requests.feed(self._head())
            return
        if self._expects() and (self.chunked or self.body_left > 0):
            # The client waits for a go-ahead that will not come: answer now, then close.
            self._answer(self.refused, close=True)

    def on_body(self, body: bytes) -> None:
        self.body_left -= len(body)
        if self.held is not None:
            self.held_body += body
            if len(self.held_body) > MAX_HELD_BODY:
                self.held = None
                self._answer(bad_request("The request's body is too large."), close=True)
            return
        if not self.forwarding:
            return
        if self.chunked:
            self.requests.feed(b"%x\r\n%b\r\n" % (len(body), body))
        else:
            self.requests.feed(body)

    def on_message_complete(self) -> None:
        if self.held is not None:
            self.refused = self.held.decide(bytes(self.held_body))
            if self.refused is None:
                self._forward_held()
        if self.forwarding and self.chunked:
            trailers = b"".join(n + b": " + v + b"\r\n" for n, v in self.trailers)
            self.requests.feed(b"0\r\n" + trailers + b"\r\n")
        elif self.refused is not None and not self.lingering:
            self._answer(self.refused, close=not self.parser.should_keep_alive())
        self._reset()

    # --- helpers ------------------------------------------------------------------------------

    def _hold(self, hold: Hold) -> None:
        """Keep the body until it is all there (a few KiB): its content decides."""
        if not self.chunked and self.body_left > MAX_HELD_BODY:
            self.refused = bad_request("The request's body is too large.")
            if self._expects():
                self._answer(self.refused, close=True)
            return
        self.held = hold
        if self._expects():
            self.responses.feed(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _forward_held(self) -> None:
        self.requests.feed(self._head())
        body = bytes(self.held_body)
        if self.chunked:
            body = (b"%x\r\n%b\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
        self.requests.feed(body)

    def _expects(self) -> bool:
        return any(n.lower() == b"expect" for n, _ in self.headers)

    def _head(self) -> bytes:
        version = self.parser.get_http_version().encode()
        lines = [b"%s %s HTTP/%s" % (self.method.encode(), bytes(self.url), version)]
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
        """Answer in order after what rclone has sent; when closing, take nothing more."""
        self.responses.feed(refusal.response(self.method == "HEAD", close))
        if close:
            self.lingering = True
            self.requests.stop()
            self.responses.finish()


async def serve(host: str, port: int, upstream_path: str, home: Path, store: Path | None) -> None:
    policy = Policy(home, store)
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(1024)
    listener.setblocking(False)
    tasks: set[asyncio.Task[None]] = set()

    def accept() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except BlockingIOError:
                return
            except OSError:
                # Out of descriptors: stop accepting a moment rather than spin on the backlog.
                loop.remove_reader(listener.fileno())
                loop.call_later(ACCEPT_PAUSE_SECONDS, loop.add_reader, listener.fileno(), accept)
                return
            task = loop.create_task(_relay(loop, policy, client, upstream_path))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    loop.add_reader(listener.fileno(), accept)
    stop = asyncio.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, stop.set)
    await stop.wait()
    loop.remove_reader(listener.fileno())
    listener.close()


async def _relay(
    loop: asyncio.AbstractEventLoop, policy: Policy, client: socket.socket, upstream_path: str
) -> None:
    client.setblocking(False)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    upstream.setblocking(False)
    with contextlib.suppress(OSError):
        upstream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
    try:
        await loop.sock_connect(upstream, upstream_path)
    except OSError:
        client.close()
        upstream.close()
        return
    try:
        relay = Relay(loop, policy, client, upstream)
    except OSError:  # out of descriptors for its pipes
        client.close()
        upstream.close()
        return
    relay.start()


def main() -> None:
    host, port, upstream_path, home, store = sys.argv[1:6]
    os.umask(0o077)
    # Six descriptors per connection (two sockets, two pipes): as many as the machine allows.
    _, most = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (most, most))
    # No store: the gate is in front of the user's S3 server.
    asyncio.run(serve(host, int(port), upstream_path, Path(home), Path(store) if store else None))


if __name__ == "__main__":
    main()
