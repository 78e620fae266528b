"""Carrying connections from a listener inside a host's network namespace to an address outside.

A listening socket keeps the namespace it was made in: one made by a thread that entered the
host's namespace takes connections there (the code's `127.0.0.1:9000`), while this process,
in the machine's namespace, connects on to the real address (the embedded S3 endpoint). The
code then sees the same URL it would see on the machine, and nothing else of its loopback.
"""

from __future__ import annotations

import contextlib
import socket
import threading

BUFFER = 256 * 1024


class Relay:
    def __init__(self) -> None:
        self._listeners: list[tuple[socket.socket, tuple[str, int]]] = []
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False

    def listen(self, address: tuple[str, int], target: tuple[str, int]) -> None:
        """Listen on `address` in the calling thread's network namespace, for `target`."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(64)
        self._listeners.append((listener, target))

    def start(self) -> None:
        for listener, target in self._listeners:
            threading.Thread(target=self._accept, args=(listener, target), daemon=True).start()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets = [listener for listener, _ in self._listeners] + list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept or recv
            sock.close()

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
        with self._lock:
            if self._closed:
                inside.close()
                outside.close()
                return
            self._open.update((inside, outside))
        back = threading.Thread(target=_copy, args=(outside, inside), daemon=True)
        back.start()
        _copy(inside, outside)
        back.join()
        with self._lock:
            self._open.difference_update((inside, outside))
        inside.close()
        outside.close()


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
