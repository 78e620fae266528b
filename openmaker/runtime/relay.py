"""Carrying connections from a listener inside a host's network namespace to an address outside.

A listening socket keeps the namespace it was made in: one made by a thread that entered the
host's namespace takes connections there (the code's `127.0.0.1:9000`), while this process,
in the machine's namespace, connects on to the real address (the embedded S3 endpoint). The
code then sees the same URL it would see on the machine, and nothing else of its loopback.
Datagrams are carried too, one question and its answer at a time (DNS over UDP to a resolver
on the machine's loopback, such as systemd-resolved's 127.0.0.53).
"""

from __future__ import annotations

import contextlib
import ipaddress
import selectors
import socket
import threading
import time
from typing import Any

BUFFER = 256 * 1024
# Datagrams: the largest one, how long an answer is waited for, and how many questions may wait
# at once (more are dropped, as a busy resolver would: the code cannot make this process pile up
# sockets).
DATAGRAM = 65535
ANSWER_SECONDS = 10.0
WAITING_AT_MOST = 256


class Carried:
    """The pairs of connections being carried, each both ways, until `close` ends them all (and
    any carried after)."""

    def __init__(self) -> None:
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False

    def carry(self, one: socket.socket, other: socket.socket) -> None:
        """Carry the pair until both ends have ended (or `close`), then close both."""
        with self._lock:
            taken = not self._closed
            if taken:
                self._open.update((one, other))
        if taken:
            carry_both_ways(one, other)
            with self._lock:
                self._open.difference_update((one, other))
        one.close()
        other.close()

    def close(self, *more: socket.socket) -> None:
        """End every pair carried (and close `more`, listeners: in the same sweep)."""
        with self._lock:
            self._closed = True
            sockets = [*more, *self._open]
            self._open.clear()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept or recv
            sock.close()


class Relay:
    def __init__(self) -> None:
        self._listeners: list[tuple[socket.socket, tuple[str, int]]] = []
        # Each with the pair of sockets that wakes its thread when the relay closes.
        self._datagrams: list[tuple[socket.socket, tuple[str, int], Waker]] = []
        self._carried = Carried()
        self._started = False

    def listen(self, address: tuple[str, int], target: tuple[str, int]) -> None:
        """Listen on `address` in the calling thread's network namespace, for `target`."""
        listener = socket.socket(_family(address[0]), socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(64)
        self._listeners.append((listener, target))

    def listen_datagrams(self, address: tuple[str, int], target: tuple[str, int]) -> None:
        """Take datagrams on `address` in the calling thread's network namespace; each is sent
        on to `target` from a socket of its own, whose answer goes back to its sender."""
        listener = socket.socket(_family(address[0]), socket.SOCK_DGRAM)
        try:
            listener.bind(address)
        except OSError:
            listener.close()
            raise
        self._datagrams.append((listener, target, Waker()))

    def start(self) -> None:
        for listener, target in self._listeners:
            threading.Thread(target=self._accept, args=(listener, target), daemon=True).start()
        for listener, target, waker in self._datagrams:
            threading.Thread(
                target=self._answer, args=(listener, target, waker), daemon=True
            ).start()
        self._started = True

    def close(self) -> None:
        for listener, _, waker in self._datagrams:
            if self._started:
                waker.wake()  # the thread closes its own sockets
            else:
                listener.close()
                waker.close()
        self._carried.close(*(listener for listener, _ in self._listeners))

    def _accept(self, listener: socket.socket, target: tuple[str, int]) -> None:
        while True:
            try:
                inside, _ = listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._carry, args=(inside, target), daemon=True).start()

    def _carry(self, inside: socket.socket, target: tuple[str, int]) -> None:
        try:
            outside = socket.create_connection(target)
        except OSError:
            inside.close()
            return
        self._carried.carry(inside, outside)

    def _answer(self, listener: socket.socket, target: tuple[str, int], waker: Waker) -> None:
        """Carry each question to `target` and its answer back, until the relay closes."""
        selector = selectors.DefaultSelector()
        selector.register(listener, selectors.EVENT_READ)
        selector.register(waker.woken, selectors.EVENT_READ)
        waiting: dict[socket.socket, tuple[Any, float]] = {}
        try:
            while True:
                ready = selector.select(timeout=ANSWER_SECONDS)
                for key, _ in ready:
                    if key.fileobj is waker.woken:
                        return
                    if key.fileobj is listener:
                        self._ask(listener, target, selector, waiting)
                        continue
                    upstream = key.fileobj
                    assert isinstance(upstream, socket.socket)
                    sender, _ = waiting.pop(upstream)
                    selector.unregister(upstream)
                    with contextlib.suppress(OSError):
                        listener.sendto(upstream.recv(DATAGRAM), sender)
                    upstream.close()
                now = time.monotonic()
                for upstream, (_, deadline) in list(waiting.items()):
                    if deadline < now:  # unanswered: the asker retries as it would anyway
                        del waiting[upstream]
                        selector.unregister(upstream)
                        upstream.close()
        finally:
            for upstream in waiting:
                upstream.close()
            selector.close()
            listener.close()
            waker.close()

    @staticmethod
    def _ask(
        listener: socket.socket,
        target: tuple[str, int],
        selector: selectors.BaseSelector,
        waiting: dict[socket.socket, tuple[Any, float]],
    ) -> None:
        try:
            question, sender = listener.recvfrom(DATAGRAM)
        except OSError:
            return
        if len(waiting) >= WAITING_AT_MOST:
            return
        upstream = socket.socket(_family(target[0]), socket.SOCK_DGRAM)
        try:
            upstream.connect(target)
            upstream.send(question)
        except OSError:
            upstream.close()
            return
        waiting[upstream] = (sender, time.monotonic() + ANSWER_SECONDS)
        selector.register(upstream, selectors.EVENT_READ)


class Waker:
    """A pair of sockets: the one end is readable once the other is woken (closed)."""

    def __init__(self) -> None:
        self.woken, self._end = socket.socketpair()

    def wake(self) -> None:
        self._end.close()

    def close(self) -> None:
        self._end.close()
        self.woken.close()


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET


def carry_both_ways(one: socket.socket, other: socket.socket) -> None:
    """Carry each connection's bytes to the other until both ends have ended (a thread for the
    way back)."""
    back = threading.Thread(target=_copy, args=(other, one), daemon=True)
    back.start()
    _copy(one, other)
    back.join()


def _copy(source: socket.socket, sink: socket.socket) -> None:
    """Until `source` ends, then pass its end on (a half-close, as HTTP clients may do)."""
    buffer = bytearray(BUFFER)
    view = memoryview(buffer)
    try:
        while count := source.recv_into(buffer):
            sink.sendall(view[:count])
    except OSError:
        pass
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)
