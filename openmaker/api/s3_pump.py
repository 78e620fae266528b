"""Bytes from one socket to another through a pipe with `splice(2)`: the kernel moves them, never
Python, so a relay costs about what the direct connection would.

A pump also carries bytes of the relay's own (`feed`), in order with what it splices, and can be
held to a number of bytes (a request's body) before it hands the source back.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
from collections.abc import Callable

PIPE_SIZE = 1024 * 1024
SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK


class Pump:
    """src → pipe → dst. `on_drained` runs whenever fed bytes have all gone into the pipe and the
    pipe has room again; `on_done` when a `take` is complete; `on_eof` when src ends (after what
    was read has gone out); `on_error` when either side fails."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        src: socket.socket,
        dst: socket.socket,
        on_eof: Callable[[], None],
        on_error: Callable[[], None],
    ) -> None:
        self.loop = loop
        self.src = src.fileno()
        self.dst = dst.fileno()
        self.dst_socket = dst
        self.on_eof = on_eof
        self.on_error = on_error
        self.on_done: Callable[[], None] | None = None
        self.on_drained: Callable[[], None] | None = None
        self.read_end, self.write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self.in_pipe = 0
        self.pending = bytearray()  # fed, not yet in the pipe
        self.left: int | None = 0  # bytes still to splice from src; None: until it ends
        self.reading = False
        self.writing = False
        self.ended = False
        self.eof_told = False
        self.closed = False

    # --- what the relay asks --------------------------------------------------------------------

    def take(self, count: int | None, on_done: Callable[[], None] | None = None) -> None:
        """Splice `count` bytes from src (None: all it sends), then call `on_done`."""
        self.left = count
        self.on_done = on_done
        self._read_when_room()

    def feed(self, data: bytes) -> None:
        if not self.pending and not self.in_pipe:
            # Nothing queued: straight to dst, the pipe only for what it cannot take now.
            try:
                sent = self.dst_socket.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.on_error()
                return
            data = data[sent:]
            if not data:
                return
        self.pending += data
        self._fill()
        self._drain()

    def stop(self) -> None:
        """Splice no more from src."""
        self.left = 0
        self.on_done = None
        self._stop_reading()

    def finish(self) -> None:
        """Take nothing more from src: what is in the pipe goes out, then `on_eof`."""
        self.stop()
        self.ended = True
        self._drain()

    @property
    def busy(self) -> bool:
        """Fed bytes wait for room: the relay should read no more for now."""
        return bool(self.pending)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._stop_reading()
        self._stop_writing()
        os.close(self.read_end)
        os.close(self.write_end)

    # --- moving -----------------------------------------------------------------------------------

    def _read_when_room(self) -> None:
        wanted = (self.left is None or self.left > 0) and not self.ended and not self.pending
        if wanted and self.in_pipe < PIPE_SIZE:
            if not self.reading:
                self.loop.add_reader(self.src, self._readable)
                self.reading = True
        else:
            self._stop_reading()

    def _stop_reading(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.src)
            self.reading = False

    def _stop_writing(self) -> None:
        if self.writing:
            self.loop.remove_writer(self.dst)
            self.writing = False

    def _readable(self) -> None:
        count = PIPE_SIZE - self.in_pipe if self.left is None else min(self.left, PIPE_SIZE)
        try:
            moved = os.splice(self.src, self.write_end, count, flags=SPLICE_FLAGS)
        except BlockingIOError:
            return
        except OSError:
            self.on_error()
            return
        if moved == 0:
            self.ended = True
            self._stop_reading()
        else:
            self.in_pipe += moved
            if self.left is not None:
                self.left -= moved
        self._drain()
        if self.closed:
            return
        self._read_when_room()
        if self.left == 0 and self.on_done is not None:
            done, self.on_done = self.on_done, None
            done()

    def _fill(self) -> None:
        while self.pending:
            try:
                written = os.write(self.write_end, self.pending)
            except BlockingIOError:
                return
            self.in_pipe += written
            del self.pending[:written]

    def _drain(self) -> None:
        while self.in_pipe:
            try:
                moved = os.splice(self.read_end, self.dst, self.in_pipe, flags=SPLICE_FLAGS)
            except BlockingIOError:
                if not self.writing:
                    self.loop.add_writer(self.dst, self._writable)
                    self.writing = True
                self._stop_reading()
                return
            except OSError:
                self.on_error()
                return
            self.in_pipe -= moved
            if self.pending:
                self._fill()
        self._stop_writing()
        if self.ended:
            if not self.eof_told:
                self.eof_told = True
                self.on_eof()
        elif self.on_drained is not None:
            self.on_drained()

    def _writable(self) -> None:
        self._drain()
        if not self.closed:
            self._read_when_room()
