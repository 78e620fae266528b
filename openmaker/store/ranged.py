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

Each of the STREAMS threads keeps its connection open (HTTP keep-alive) and takes the next part
itself: a part per thread hand-over and a connection per part left the streams idle between
parts, for as long as a busy machine took to schedule the event loop, then the server's accept.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import socket
import struct
import threading
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

# Objects from this size up are fetched in parts. Parts are small enough that the streams end
# close together (the last of a few large ones ran alone, at one stream's speed), and large
# enough that a request per part costs little.
RANGED_MIN_SIZE = 64 * 1024 * 1024
PART_SIZE = 16 * 1024 * 1024
# Parts in flight at once, each on a connection of its own.
STREAMS = 5
_TAIL_PART = 1024 * 1024
_READ_SIZE = 4 * 1024 * 1024
# What one write puts in the page cache. The kernel sizes the page-cache folios it allocates by
# the write: a write of megabytes asks for huge ones, which on a machine whose memory is
# fragmented (a busy one, after a few large downloads) sets it compacting memory, at up to
# three times the CPU the bytes cost. Writes of 32 KiB (order 3, the largest the allocator
# treats as cheap) never do.
_WRITE_SIZE = 32 * 1024
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
    """Write the object to `destination`, STREAMS parts at a time. However this ends (a part
    that fails, a cancel), no stream's thread is left reading."""
    url = await obstore.sign_async(store, "GET", key, _URL_LIFETIME)
    retry = retry_seconds(store)
    fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    streams = min(STREAMS, -(-size // PART_SIZE))
    parts = _Parts(size, streams)
    abort = Abort()
    loop = asyncio.get_running_loop()

    def report(count: int) -> None:
        # Progress is reported on the event loop's thread, never from a stream's. A loop
        # already closed (the download given up) wants no more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(on_bytes, count)

    try:
        await asyncio.gather(
            *(
                asyncio.to_thread(_stream, url, destination, parts, report, abort, retry)
                for _ in range(streams)
            )
        )
    finally:
        abort.abort()


class _Parts:
    """The parts of an object, handed out in order to whichever stream asks first. The last
    parts shrink (to a share of what is left, down to _TAIL_PART), so that the streams end
    together instead of the last full-size parts running alone."""

    def __init__(self, size: int, streams: int) -> None:
        self.size = size
        self.streams = streams
        self._next = 0
        self._lock = threading.Lock()

    def take(self) -> tuple[int, int] | None:
        """The first and last byte of the next part, or None when every part is taken."""
        with self._lock:
            start = self._next
            left = self.size - start
            if left <= 0:
                return None
            # A whole number of _TAIL_PART: parts end on page boundaries.
            share = -(-left // (self.streams * _TAIL_PART)) * _TAIL_PART
            self._next = start + min(PART_SIZE, share, left)
            return start, self._next - 1


def _stream(
    url: str,
    destination: Path,
    parts: _Parts,
    report: Callable[[int], None],
    abort: Abort,
    retry: float,
) -> None:
    # A descriptor of the stream's own: one shared with the others could be closed (and its
    # number reused) while a stream given up on still writes.
    fd = os.open(destination, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    link = KeptConnection(url, abort)
    try:
        while (part := parts.take()) is not None:
            report(fetch_part(url, fd, *part, retry, abort, link))
    finally:
        link.close()
        os.close(fd)


def fetch_part(
    url: str,
    fd: int,
    start: int,
    end: int,
    retry: float,
    abort: Abort | None = None,
    link: KeptConnection | None = None,
) -> int:
    """Write bytes `start`..`end` at their place in `fd`; a part that breaks off is asked for
    again from the byte it reached (store/retry.py's backoff and time limit), until `abort`.
    Through `link`'s connection when given (kept open for the next part)."""
    abort = abort or Abort()
    link = link or KeptConnection(url, abort, keep=False)
    cursor = [start]  # the next byte to write, kept across attempts
    backoff = Backoff(retry)
    while True:
        try:
            _write_range(link, fd, cursor, end)
            return end + 1 - start
        except Exception as exc:
            link.close()  # a connection that failed is not used again
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


def open_range(
    url: str,
    start: int,
    end: int,
    abort: Abort,
    connection: http.client.HTTPConnection | None = None,
) -> RangeAnswer:
    """A GET of bytes `start`..`end` whose answer is checked to be exactly that range; on
    `connection` when it is still open (keep-alive), else on a new one."""
    parts = urllib.parse.urlsplit(url)
    if connection is None or connection.sock is None:
        connection = _connect(parts, abort)
    sock = connection.sock  # before the answer: one that ends the connection unsets it
    try:
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
    direct = type(sock) is socket.socket  # not TLS: MSG_WAITALL needs the kernel's socket
    plain = direct and not response.chunked and response.length == size
    return RangeAnswer(connection, response, sock if plain else None, size)


def _connect(parts: urllib.parse.SplitResult, abort: Abort) -> http.client.HTTPConnection:
    connection_type = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    connection = connection_type(parts.hostname or "", parts.port, timeout=_CONNECT_SECONDS)
    try:
        connection.connect()
        sock = connection.sock
        if type(sock) is socket.socket:
            _block_with_timeout(sock)
        elif sock is not None:
            sock.settimeout(_READ_SECONDS)
        abort.opened(connection)
    except BaseException:
        connection.close()
        raise
    return connection


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


class KeptConnection:
    """One stream's connection, kept open from one ranged GET to the next when the server
    allows it (keep-alive), and counted in `abort` while open."""

    def __init__(self, url: str, abort: Abort, keep: bool = True) -> None:
        self.url = url
        self.abort = abort
        self.keep = keep
        self._connection: http.client.HTTPConnection | None = None
        self._buffer: memoryview | None = None

    def buffer(self) -> memoryview:
        """The stream's read buffer, made once: zeroing a fresh one per part costs a pass."""
        if self._buffer is None:
            self._buffer = memoryview(bytearray(_READ_SIZE))
        return self._buffer

    def open(self, start: int, end: int) -> RangeAnswer:
        answer = open_range(self.url, start, end, self.abort, self._connection)
        self._connection = answer.connection
        return answer

    def done(self, answer: RangeAnswer) -> None:
        """The answer's body is read: keep the connection for the next GET if it can serve
        one (the whole body read, the server not closing it), else close it."""
        reusable = (
            self.keep
            and answer.remaining == 0
            and not answer.response.will_close
            and answer.connection.sock is not None
        )
        answer.response.close()
        if not reusable:
            self.close()

    def close(self) -> None:
        if self._connection is not None:
            self.abort.closed(self._connection)
            self._connection.close()
            self._connection = None


def _write_range(link: KeptConnection, fd: int, cursor: list[int], end: int) -> None:
    """Write what arrives of bytes `cursor[0]`..`end`, moving the cursor as bytes land."""
    start = cursor[0]
    answer = link.open(start, end)
    view = link.buffer()
    try:
        while count := answer.readinto(view):
            _write_at(fd, view[:count], cursor)
        if cursor[0] != end + 1:
            raise EOFError(f"ranged GET of bytes {start}-{end} ended after {cursor[0] - start}")
    except BaseException:
        answer.response.close()
        raise
    link.done(answer)


def _write_at(fd: int, data: memoryview, cursor: list[int]) -> None:
    """Write `data` at `cursor[0]` in pieces of _WRITE_SIZE, moving the cursor."""
    while data:
        written = os.pwrite(fd, data[:_WRITE_SIZE], cursor[0])
        cursor[0] += written
        data = data[written:]
