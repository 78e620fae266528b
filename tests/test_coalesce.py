"""The API's coalescing transport (openmaker/api/coalesce.py): what one loop turn writes leaves
in one write, in order; a big answer produced without yielding leaves as it grows."""

from __future__ import annotations

import asyncio
from typing import cast

from openmaker.api.coalesce import HOLD_BYTES, CoalescingTransport


class _Recorded:
    """The socket's side of a transport: every write it is given."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True


def test_one_turns_writes_leave_together_in_order() -> None:
    async def scenario() -> list[bytes]:
        recorded = _Recorded()
        transport = CoalescingTransport(cast(asyncio.Transport, recorded))
        transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
        transport.write(b"body")
        assert recorded.writes == []  # held until the turn ends
        await asyncio.sleep(0)
        transport.write(b"more")
        transport.close()  # what is held goes out before the close
        assert recorded.closed
        return recorded.writes

    assert asyncio.run(scenario()) == [b"HTTP/1.1 200 OK\r\n\r\nbody", b"more"]


def test_an_answer_that_never_yields_is_not_gathered_whole() -> None:
    async def scenario() -> list[bytes]:
        recorded = _Recorded()
        transport = CoalescingTransport(cast(asyncio.Transport, recorded))
        chunk = b"x" * (64 * 1024)
        for _ in range(16):  # 1 MiB in one turn
            transport.write(chunk)
        sent_in_the_turn = list(recorded.writes)
        await asyncio.sleep(0)
        assert b"".join(recorded.writes) == chunk * 16
        return sent_in_the_turn

    sent = asyncio.run(scenario())
    assert sent and all(len(write) <= HOLD_BYTES for write in sent)
