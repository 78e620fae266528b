"""Large objects from an S3 server as concurrent ranged GETs, written in place.

One GET stream is bound by how fast the server sends one response (rclone serve s3 spends a
whole core on it), so a large object comes faster in parallel parts. obstore's own ranged reads
refuse a `200` answer to a range request, which rclone sends (with the right Content-Range and
only the bytes asked for), so the parts are fetched from a presigned URL with http.client,
each accepted only when its Content-Range is the range asked for.

A part's body is read straight from its socket, a whole buffer per system call (MSG_WAITALL):
every call into the kernel gives up the GIL and must win it back, and on a busy machine, with
several parts' threads and the event loop wanting it, those hand-overs (not the bytes) were
what made a large object slower than a Go client's.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import socket
import struct
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import obstore
from obstore.store import ObjectStore, S3Store

from openmaker.store.abort import Abort
from openmaker.store.location import retry_seconds
from openmaker.store.retry import Backoff, RefusedAnswer

# Objects from this size up are fetched in parts. Parts are small enough that the parts in
# flight end close together (the last of a few large ones ran alone, at one stream's speed),
# and large enough that a request (a new connection) per part costs little.
RANGED_MIN_SIZE = 64 * 1024 * 1024
PART_SIZE = 16 * 1024 * 1024
PARTS_IN_FLIGHT = 4
_READ_SIZE = 4 * 1024 * 1024
_URL_LIFETIME = timedelta(hours=1)
# A connection not made by then is an error (retried); an answer may take longer.
_CONNECT_SECONDS = 10
_READ_SECONDS = 300


def ranged_store(store: ObjectStore, size: int) -> S3Store | None:
    """The S3 store to fetch an object of `size` bytes from in parts, or None for one stream."""
    return store if isinstance(store, S3Store) and size >= RANGED_MIN_SIZE else None


async def download_ranged(
    store: S3Store, key: str, size: int, destination: Path, on_bytes: Callable[[int], None]
) -> None:
    """Write the object to `destination`, PARTS_IN_FLIGHT parts at a time. However this ends
    (a part that fails, a cancel), no part's thread is left reading."""
    url = await obstore.sign_async(store, "GET", key, _URL_LIFETIME)
    retry = retry_seconds(store)
    fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    gate = asyncio.Semaphore(PARTS_IN_FLIGHT)
    abort = Abort()

    async def part(start: int) -> None:
        end = min(size, start + PART_SIZE) - 1
        async with gate:
            # Progress is reported here, on the event loop's thread, never from a worker.
            got = await asyncio.to_thread(_fetch_into, url, destination, start, end, abort, retry)
            on_bytes(got)

    try:
        await asyncio.gather(*(part(start) for start in range(0, size, PART_SIZE)))
    finally:
        abort.abort()


def _fetch_into(
    url: str, destination: Path, start: int, end: int, abort: Abort, retry: float
) -> int:
    # A descriptor of the part's own: one shared with the others could be closed (and its
    # number reused) while a part given up on still writes.
    fd = os.open(destination, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return fetch_part(url, fd, start, end, retry, abort)
    finally:
        os.close(fd)


def fetch_part(
    url: str, fd: int, start: int, end: int, retry: float, abort: Abort | None = None
) -> int:
    """Write bytes `start`..`end` at their place in `fd`; a part that breaks off is asked for
    again from the byte it reached (store/retry.py's backoff and time limit), until `abort`."""
    abort = abort or Abort()
    cursor = [start]  # the next byte to write, kept across attempts
    backoff = Backoff(retry)
    while True:
        try:
            _write_range(url, fd, cursor, end, abort)
            return end + 1 - start
        except Exception as exc:
            if abort.aborted:
                raise
            backoff.pause_blocking(exc)


@dataclass
class RangeAnswer:
    """The answer to one ranged GET, its body not read yet. The connection is `abort`'s until
    closed with close_range()."""

    connection: http.client.HTTPConnection
    response: http.client.HTTPResponse
    # The socket to read the body from directly: None where http.client must (TLS, a body
    # not exactly as long as the range).
    sock: socket.socket | None
    remaining: int  # bytes of the body still to read
    _drained: bool = field(default=False)

    def readinto(self, view: memoryview) -> int:
        """Fill `view` with the next bytes of the body (up to its end): the count, short only
        at the body's end or when the server stops sending; 0 at the end."""
        view = view[: self.remaining]
        if not view:
            return 0
        if self.sock is None:
            count = self.response.readinto(view)
        elif not self._drained:
            # What http.client read past the headers into its buffer comes first.
            self._drained = True
            data = self.response.fp.read1(len(view))
            count = len(data)
            view[:count] = data
        else:
            count = self.sock.recv_into(view, len(view), socket.MSG_WAITALL)
        self.remaining -= count
        return count


def open_range(url: str, start: int, end: int, abort: Abort) -> RangeAnswer:
    """A GET of bytes `start`..`end` whose answer is checked to be exactly that range."""
    parts = urllib.parse.urlsplit(url)
    connection_type = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    connection = connection_type(parts.hostname or "", parts.port, timeout=_CONNECT_SECONDS)
    try:
        connection.connect()
        sock = connection.sock
        direct = type(sock) is socket.socket  # not TLS: MSG_WAITALL needs the kernel's socket
        if direct:
            _block_with_timeout(sock)
        elif sock is not None:
            sock.settimeout(_READ_SECONDS)
        abort.opened(connection)
        connection.request(
            "GET", f"{parts.path}?{parts.query}", headers={"Range": f"bytes={start}-{end}"}
        )
        response = connection.getresponse()
        content_range = response.getheader("Content-Range") or ""
        if response.status not in (200, 206) or not content_range.startswith(
            f"bytes {start}-{end}/"
        ):
            # Only a server error (5xx) may answer differently next time.
            error: type[OSError] = OSError if response.status >= 500 else RefusedAnswer
            if response.status == 404:
                error = FileNotFoundError
            raise error(
                f"ranged GET of bytes {start}-{end} answered HTTP {response.status} "
                f"({content_range or 'no Content-Range'})"
            )
    except BaseException:
        abort.closed(connection)
        connection.close()
        raise
    size = end + 1 - start
    # Chunked framing, or a length other than the range's, is http.client's to read.
    plain = direct and not response.chunked and response.length == size
    return RangeAnswer(connection, response, sock if plain else None, size)


def _block_with_timeout(sock: socket.socket) -> None:
    """Blocking reads (MSG_WAITALL waits only on a blocking socket), which the kernel still
    ends after _READ_SECONDS of silence (an error, retried); abort's shutdown ends them too."""
    sock.settimeout(None)
    limit = struct.pack("ll", _READ_SECONDS, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)


def close_range(answer: RangeAnswer, abort: Abort) -> None:
    abort.closed(answer.connection)
    answer.response.close()
    answer.connection.close()


def _write_range(url: str, fd: int, cursor: list[int], end: int, abort: Abort) -> None:
    """Write what arrives of bytes `cursor[0]`..`end`, moving the cursor as bytes land."""
    start = cursor[0]
    answer = open_range(url, start, end, abort)
    try:
        buffer = bytearray(min(_READ_SIZE, end + 1 - start))
        view = memoryview(buffer)
        while count := answer.readinto(view):
            os.pwrite(fd, view[:count], cursor[0])
            cursor[0] += count
        if cursor[0] != end + 1:
            raise EOFError(f"ranged GET of bytes {start}-{end} ended after {cursor[0] - start}")
    finally:
        close_range(answer, abort)
