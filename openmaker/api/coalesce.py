"""uvicorn's HTTP protocol, its writes of one loop turn sent together.

uvicorn writes an answer's head and its body separately: two sends, and on loopback two
wake-ups of the client, the first of which only tells it to wait for the second. Under load
that second send cost the server more than its own work on the request (bench/invoke.py).
Here what is written during one turn of the event loop is held and sent as one write at the end
of the turn (or before the connection closes), in the order written: nothing is reordered, and
an answer streamed over several turns still goes out as it comes, a turn later at most.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Past this much held, a write goes out at once: an answer produced without ever yielding to the
# loop must not gather in memory (nor escape uvicorn's flow control) until it ends.
HOLD_BYTES = 256 * 1024


class CoalescingTransport:
    """A transport that sends what is written in one loop turn at once; anything else is the
    wrapped transport's."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: list[bytes] = []
        self._held_bytes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._held:
            asyncio.get_running_loop().call_soon(self._flush)
        self._held.append(bytes(data))
        self._held_bytes += len(data)
        if self._held_bytes >= HOLD_BYTES:
            self._flush()

    def write_whole(self, data: bytes) -> None:
        """Write an answer made in one piece now, after anything held (no turn's wait)."""
        self._flush()
        self._transport.write(data)

    def _flush(self) -> None:
        if self._held:
            held, self._held, self._held_bytes = self._held, [], 0
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._flush()
        self._transport.set_protocol(protocol)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport))  # type: ignore[arg-type]
