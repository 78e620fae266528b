"""The least an HTTP hop written in Python costs: a relay on uvloop and httptools that passes
each request to the container and its answer back, checking nothing (no signature, no route, no
metrics). bench/invoke.py measures it beside openmaker's InvokeEndpoint, so that the throughput
ratio can be read against what any extra hop on the same cores leaves.

    python -m bench.relay_floor PORT CONTAINER_HOST CONTAINER_PORT
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

import httptools
import uvloop


class _Upstream(asyncio.Protocol):
    """The client connection's own kept-alive connection to the container."""

    def __init__(self, client: _Client) -> None:
        self.client = client
        self.parser = httptools.HttpResponseParser(self)
        self.pieces: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        self.pieces.append(data)
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        answer, self.pieces = b"".join(self.pieces), []
        self.client.send(answer)


class _Client(asyncio.Protocol):
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.parser = httptools.HttpRequestParser(self)
        self.pieces: list[bytes] = []
        self.upstream: asyncio.Transport | None = None
        self.waiting: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        upstream, _ = await loop.create_connection(lambda: _Upstream(self), self.host, self.port)
        self.upstream = upstream
        for request in self.waiting:
            upstream.write(request)

    def data_received(self, data: bytes) -> None:
        self.pieces.append(data)
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        request, self.pieces = b"".join(self.pieces), []
        if self.upstream is None:
            self.waiting.append(request)
        else:
            self.upstream.write(request)

    def send(self, answer: bytes) -> None:
        self.transport.write(answer)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.close()


async def _serve(port: int, host: str, container_port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Client(host, container_port), "127.0.0.1", port)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(_serve(int(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
