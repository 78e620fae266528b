"""Reading one object as a stream of chunks, resumed from the byte reached when it breaks off.

Memory stays bounded by the chunk size whatever the object's size. The first attempt is an
ordinary GET through obstore; a resumed one asks for the rest with a Range header (for S3
through a presigned URL, since rclone answers ranges with 200 and obstore refuses that, see
store/ranged.py).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from datetime import timedelta

import obstore
from obstore.store import ObjectStore, S3Store

from openmaker.store.abort import Abort
from openmaker.store.errors import StoreError, short_message
from openmaker.store.location import retry_seconds
from openmaker.store.ranged import (
    RANGED_MIN_SIZE,
    KeptConnection,
    RangeAnswer,
    close_range,
    open_range,
)
from openmaker.store.retry import Backoff

CHUNK_SIZE = 1024 * 1024
# A large object comes as PARTS_AHEAD ranged GETs at once: one GET stream is bound by what
# one server core sends (see store/ranged.py). Memory: PARTS_AHEAD parts per object.
PART_SIZE = 8 * 1024 * 1024
PARTS_AHEAD = 4
_URL_LIFETIME = timedelta(hours=1)

# A large object's parts come as the bytearrays they were read into: copying each into
# `bytes` would cost a pass over every byte.
Chunk = bytes | bytearray


async def object_size(store: ObjectStore, key: str) -> int:
    try:
        meta = await obstore.head_async(store, key)
    except FileNotFoundError:
        raise StoreError(f"object {key!r} does not exist") from None
    return int(meta["size"])


async def stream_object(store: ObjectStore, key: str, size: int) -> AsyncIterator[Chunk]:
    """Every byte of the object `key` (of `size` bytes), in chunks of about CHUNK_SIZE (parts
    of PART_SIZE for a large object on an S3 server)."""
    if isinstance(store, S3Store) and size >= RANGED_MIN_SIZE:
        try:
            async for part in _parallel_parts(store, key, size):
                yield part
        except Exception as exc:
            raise StoreError(f"cannot read {key!r}: {short_message(exc)}") from exc
        return
    offset = 0
    backoff = Backoff(retry_seconds(store))
    while True:
        try:
            async for chunk in _attempt(store, key, offset, size):
                offset += len(chunk)
                yield chunk
            if offset != size:
                raise EOFError(f"the object ended after {offset} of {size} bytes")
            return
        except StoreError:
            raise
        except Exception as exc:
            try:
                await backoff.pause(exc)
            except Exception:
                raise StoreError(f"cannot read {key!r}: {short_message(exc)}") from exc


async def _attempt(store: ObjectStore, key: str, offset: int, size: int) -> AsyncIterator[bytes]:
    if offset == 0 and size <= CHUNK_SIZE:
        # One read: for a small object the streaming machinery costs more than its bytes.
        result = await obstore.get_async(store, key)
        yield bytes(await result.bytes_async())
    elif offset == 0:
        result = await obstore.get_async(store, key)
        async for chunk in result.stream(min_chunk_size=CHUNK_SIZE):
            yield bytes(chunk)
    elif isinstance(store, S3Store):
        url = await obstore.sign_async(store, "GET", key, _URL_LIFETIME)
        abort = Abort()
        try:
            answer = await asyncio.to_thread(open_range, url, offset, size - 1, abort)
            try:
                while chunk := await asyncio.to_thread(_read_chunk, answer):
                    yield chunk
            finally:
                close_range(answer, abort)
        finally:
            # However the reading ends (a cancel included), no thread is left waiting on it.
            abort.abort()
    else:
        result = await obstore.get_async(store, key, options={"range": (offset, size)})
        async for chunk in result.stream(min_chunk_size=CHUNK_SIZE):
            yield bytes(chunk)


async def _parallel_parts(store: S3Store, key: str, size: int) -> AsyncIterator[bytearray]:
    """The object's parts in order, with PARTS_AHEAD of them being fetched at any time, each
    on a connection a finished part left open (keep-alive)."""
    url = await obstore.sign_async(store, "GET", key, _URL_LIFETIME)
    retry = retry_seconds(store)
    starts = iter(range(0, size, PART_SIZE))
    pending: deque[tuple[asyncio.Task[bytearray], KeptConnection]] = deque()
    idle: list[KeptConnection] = []
    abort = Abort()

    def launch() -> None:
        start = next(starts, None)
        if start is not None:
            end = min(size, start + PART_SIZE) - 1
            link = idle.pop() if idle else KeptConnection(url, abort)
            read = asyncio.to_thread(_read_range, link, start, end, retry)
            pending.append((asyncio.create_task(read), link))

    for _ in range(PARTS_AHEAD):
        launch()
    try:
        while pending:
            task, link = pending.popleft()
            part = await task
            idle.append(link)  # its part is read: the connection is free for the next
            launch()
            yield part
    finally:
        abort.abort()  # the parts being read end with their connections
        for task, _ in pending:
            task.cancel()
        for link in idle:
            link.close()


def _read_chunk(answer: RangeAnswer) -> bytes:
    buffer = bytearray(CHUNK_SIZE)
    count = answer.readinto(memoryview(buffer))
    return bytes(memoryview(buffer)[:count])


def _read_range(link: KeptConnection, start: int, end: int, retry: float) -> bytearray:
    """Bytes `start`..`end`; a GET that breaks off is asked for again from the byte reached."""
    buffer = bytearray(end + 1 - start)
    view = memoryview(buffer)
    got = 0
    backoff = Backoff(retry)
    while got < len(buffer):
        try:
            answer = link.open(start + got, end)
            try:
                while got < len(buffer) and (count := answer.readinto(view[got:])):
                    got += count
                if got < len(buffer):
                    raise EOFError(f"ranged GET of bytes {start}-{end} ended after {got} bytes")
            except BaseException:
                answer.response.close()
                raise
            link.done(answer)
        except Exception as exc:
            link.close()  # a connection that failed is not used again
            if link.abort.aborted:
                raise
            backoff.pause_blocking(exc)
    return buffer
