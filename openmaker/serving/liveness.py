"""Connections to an instance that notice when the instance is gone.

A container killed together with its network may never close its connections: the kernel
closes its sockets once no packet can leave the namespace, and a request waiting for its
answer would wait for the whole invocation time limit (60 s; an async request's up to an
hour). So every connection to an instance is probed by the kernel while it waits (TCP
keepalive) and given up once unacknowledged for USER_TIMEOUT_MS: a live container's kernel
answers the probes however long its model takes, so draining, slow answers and long async
invocations are untouched; a gone one's answers nothing (its address unused) or refuses them
(its address taken by its replacement), and the request ends within seconds.
"""

from __future__ import annotations

import contextlib
import http.client
import socket

# First probe after this long with nothing received, then one a second.
IDLE_SECONDS = 1
INTERVAL_SECONDS = 1
PROBES = 3
# Past this with a probe or sent data unacknowledged, the connection is given up.
USER_TIMEOUT_MS = 5000


def watch(sock: socket.socket) -> None:
    """Have the kernel probe a connection to an instance and give it up once it goes."""
    with contextlib.suppress(OSError, AttributeError):  # AttributeError: not on Linux
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, IDLE_SECONDS)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, INTERVAL_SECONDS)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, PROBES)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)


class InstanceConnection(http.client.HTTPConnection):
    """An HTTP connection to an instance, watched (`watch`) once connected."""

    def connect(self) -> None:
        super().connect()
        watch(self.sock)
