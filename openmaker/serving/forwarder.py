"""The two ends of the way from the server's proxy to an instance on another node of the Ray
cluster (serving/ray_instances.py).

On the node, a `Forwarder` listens on the node's address (the one Ray knows it by) and carries a
connection to the instance's container only once the connection's first bytes are the
instance's secret; anything else is closed unanswered. The container's port itself is on a
bridge of the node's own, out of the network's reach.

On the server's machine, a `Presenter` listens on loopback for the proxy (and the endpoint's
worker, for its pings): it opens a connection to the node's forwarder for each one it takes,
sends the secret first and then carries the bytes both ways. The proxy thus reaches a remote
instance at a plain `host:port`, as it reaches a local one, and never learns the secret.

The secret is made by the endpoint's worker (`new_secret`), given to the node's agent in a Ray
call, and is never in a command line or an environment.
"""

from __future__ import annotations

import hmac
import secrets
import socket
import threading

from openmaker.runtime.relay import Carried

# The secret: this many bytes (hex digits of 32 random bytes).
SECRET_BYTES = 64
# How long a connection has to present the secret before it is closed, and how many may be
# presenting it at once (more are closed at once: a flood holds no more threads than this).
SECRET_SECONDS = 5.0
PRESENTING_AT_MOST = 64


def new_secret() -> bytes:
    return secrets.token_hex(SECRET_BYTES // 2).encode()


class _Carrier:
    """A listener whose connections are each carried to a peer by two threads."""

    def __init__(self, address: tuple[str, int]) -> None:
        self._listener = socket.create_server(address, backlog=128)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._carried = Carried()
        threading.Thread(target=self._accept, name="forward", daemon=True).start()

    def close(self) -> None:
        self._carried.close(self._listener)

    def _accept(self) -> None:
        while True:
            try:
                taken, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(taken,), daemon=True).start()

    def _serve(self, taken: socket.socket) -> None:
        try:
            peer = self._peer(taken)
        except OSError:
            peer = None
        if peer is None:
            taken.close()
            return
        self._carried.carry(taken, peer)

    def _peer(self, taken: socket.socket) -> socket.socket | None:
        raise NotImplementedError


class Forwarder(_Carrier):
    """On the instance's node: `listen` (the node's address, any port) to the container's
    `target`, for connections that present `secret` first."""

    def __init__(self, listen: str, target: tuple[str, int], secret: bytes) -> None:
        self.target, self._secret = target, secret
        self._presenting = threading.BoundedSemaphore(PRESENTING_AT_MOST)
        super().__init__((listen, 0))

    def _peer(self, taken: socket.socket) -> socket.socket | None:
        if not self._presenting.acquire(blocking=False):
            return None
        try:
            said = self._read_secret(taken)
        finally:
            self._presenting.release()
        if said is None or not hmac.compare_digest(said, self._secret):
            return None
        taken.settimeout(None)
        return socket.create_connection(self.target)

    @staticmethod
    def _read_secret(taken: socket.socket) -> bytes | None:
        taken.settimeout(SECRET_SECONDS)
        said = b""
        while len(said) < SECRET_BYTES:
            part = taken.recv(SECRET_BYTES - len(said))
            if not part:
                return None
            said += part
        return said


class Presenter(_Carrier):
    """On the server's machine: a loopback port (`listen`; any free one on 127.0.0.1 unless
    given) whose connections go on to the node's forwarder at `target`, the secret sent first."""

    def __init__(
        self, target: tuple[str, int], secret: bytes, listen: tuple[str, int] = ("127.0.0.1", 0)
    ) -> None:
        self.target, self._secret = target, secret
        super().__init__(listen)

    def _peer(self, taken: socket.socket) -> socket.socket | None:
        peer = socket.create_connection(self.target)
        peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer.sendall(self._secret)
        return peer
