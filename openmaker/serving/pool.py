"""Kept-alive HTTP connections to the instances, a few per address, for the proxy to reuse.

Opening a connection per invocation costs a handshake and a thread's worth of work in the
container's server each time. A connection goes back to the pool once its answer is read whole
(and the container did not ask to close it); one idle for IDLE_SECONDS is closed, so that an
instance taken out of the route is soon left with no connection open: the endpoint's worker
stops a retired instance only once none is (serving/worker.py).
"""

from __future__ import annotations

import contextlib
import http.client
import select
import threading
import time

from openmaker.serving.liveness import InstanceConnection

# Under the worker's wait before it looks for open connections (ROUTE_CHANGE_SECONDS).
IDLE_SECONDS = 1.0
# Idle connections kept per address, at most.
KEPT_PER_ADDRESS = 32


class ConnectionPool:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._idle: dict[str, list[tuple[float, http.client.HTTPConnection]]] = {}
        self._lock = threading.Lock()
        self._reaper: threading.Thread | None = None

    def take(self, address: str) -> http.client.HTTPConnection:
        """A kept connection to `address` (host:port) still open, else a new one."""
        while True:
            with self._lock:
                idle = self._idle.get(address)
                connection = idle.pop()[1] if idle else None
            if connection is None:
                break
            if not _dropped(connection):
                return connection
            connection.close()
        host, _, port = address.rpartition(":")
        return InstanceConnection(host, int(port), timeout=self.timeout)

    def give_back(self, address: str, connection: http.client.HTTPConnection) -> None:
        """Keep a connection whose last answer was read whole, for the next invocation."""
        kept = False
        with self._lock:
            idle = self._idle.setdefault(address, [])
            if len(idle) < KEPT_PER_ADDRESS and connection.sock is not None:
                idle.append((time.monotonic(), connection))
                kept = True
            if self._reaper is None:
                self._reaper = threading.Thread(target=self._reap, name="proxy-pool", daemon=True)
                self._reaper.start()
        if not kept:
            connection.close()

    def _reap(self) -> None:
        while True:
            time.sleep(IDLE_SECONDS / 4)
            self.close_idle(IDLE_SECONDS)

    def close_idle(self, older_than: float = 0.0) -> None:
        """Close the connections idle for longer than `older_than` seconds."""
        limit = time.monotonic() - older_than
        stale: list[http.client.HTTPConnection] = []
        with self._lock:
            for address in list(self._idle):
                idle = self._idle[address]
                stale += [c for since, c in idle if since <= limit]
                kept = [(since, c) for since, c in idle if since > limit]
                if kept:
                    self._idle[address] = kept
                else:
                    del self._idle[address]
        for connection in stale:
            with contextlib.suppress(OSError):
                connection.close()


def _dropped(connection: http.client.HTTPConnection) -> bool:
    """Whether the container closed an idle connection (or wrote on it unasked): then it is
    readable. Checked before a request is sent on it, so that no invocation is sent twice."""
    sock = connection.sock
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)
