"""Ending the blocking reads of a transfer that its event loop has given up on.

Ranged GETs run in threads (store/ranged.py); cancelling the coroutine that waits for one
leaves its thread reading, for as long as the socket's timeout (minutes) when the server says
nothing, and `asyncio.run` waits for that thread before it returns: a stop would wait with it.
Aborting shuts the connections down, which ends their reads at once, and makes any further
attempt fail.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading


class Aborted(Exception):
    """The transfer was given up; no further attempt is made."""


class Abort:
    """The connections of one transfer's blocking reads, to end them from another thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: set[http.client.HTTPConnection] = set()
        self.aborted = False

    def opened(self, connection: http.client.HTTPConnection) -> None:
        """Count `connection` in (once it has a socket); raises Aborted after an abort."""
        with self._lock:
            if self.aborted:
                raise Aborted("the transfer was given up")
            self._open.add(connection)

    def closed(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            self._open.discard(connection)

    def abort(self) -> None:
        with self._lock:
            self.aborted = True
            for connection in self._open:
                # OSError: already closed by its reader.
                if connection.sock is not None:
                    with contextlib.suppress(OSError):
                        connection.sock.shutdown(socket.SHUT_RDWR)
