"""An HTTP proxy in front of a real S3 server that records every request and misbehaves on
purpose: answers 5xx, cuts a response's body short, or never answers (a black hole).

Requests pass through unchanged (the Host header included, so that signatures still hold);
each answer is the real server's, read whole and sent on, unless a fault says otherwise.
"""

from __future__ import annotations

import http.client
import http.server
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

# Headers about one hop of the connection, not the message.
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


@dataclass
class Seen:
    """A request as the proxy received it, and what it answered."""

    method: str
    path: str
    headers: dict[str, str]  # by lower-case name
    status: int = 0
    body_sent: int = 0  # bytes of the answer's body sent before it ended (or was cut)
    peer: int = 0  # the client's port: one per connection


Matches = Callable[[Seen], bool]


@dataclass
class Fault:
    """The next `times` requests that `matches` accepts get `status` (an S3 error), a body cut
    after `keep` bytes (when `keep` is set), or no answer at all (`silent`)."""

    matches: Matches
    times: int
    status: int = 503
    keep: int | None = None
    silent: bool = False


@dataclass
class S3Proxy:
    upstream: str
    faults: list[Fault] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def add(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def requests(self, matches: Matches) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if matches(s)]

    def close(self) -> None:
        self._released.set()  # silent requests end with the proxy
        self._server.shutdown()
        self._server.server_close()

    def _fault_for(self, seen: Seen) -> Fault | None:
        with self._lock:
            self.seen.append(seen)
            for fault in self.faults:
                if fault.times > 0 and fault.matches(seen):
                    fault.times -= 1
                    return fault
        return None


def object_get(key: str) -> Matches:
    """A GET of the object `key` (of any bucket)."""
    return lambda s: s.method == "GET" and urlsplit(s.path).path.endswith(f"/{key}")


def _handler(proxy: S3Proxy) -> type[http.server.BaseHTTPRequestHandler]:
    upstream = urlsplit(proxy.upstream)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._forward()

        do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {name.lower(): value for name, value in self.headers.items()}
            seen = Seen(self.command, self.path, headers, peer=self.client_address[1])
            fault = proxy._fault_for(seen)
            if fault is not None and fault.silent:
                proxy._released.wait()
                self.close_connection = True
                return
            if fault is not None and fault.keep is None:
                self._answer_error(seen, fault.status)
                return
            connection = http.client.HTTPConnection(upstream.hostname or "", upstream.port)
            try:
                connection.request(self.command, self.path, body, dict(self.headers.items()))
                answer = connection.getresponse()
                data = answer.read()
            finally:
                connection.close()
            seen.status = answer.status
            self.send_response(answer.status)
            for name, value in answer.getheaders():
                if name.lower() not in _HOP_BY_HOP:
                    self.send_header(name, value)
            if self.command == "HEAD":
                self.send_header("Content-Length", answer.getheader("Content-Length") or "0")
                self.end_headers()
                return
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if fault is not None and fault.keep is not None:
                data = data[: fault.keep]
                self.close_connection = True  # cut: fewer bytes than Content-Length said
            # Counted before the write: the client may have read it all and looked at the
            # record before this thread is scheduled again.
            seen.body_sent = len(data)
            try:
                self.wfile.write(data)
            except OSError:
                seen.body_sent = 0
                raise

        def _answer_error(self, seen: Seen, status: int) -> None:
            code = "ServiceUnavailable" if status == 503 else "InternalError"
            body = f"<Error><Code>{code}</Code><Message>fault</Message></Error>".encode()
            seen.status, seen.body_sent = status, len(body)
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return Handler
