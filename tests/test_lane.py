"""The invocation lane (openmaker/api/_lane.c) on its own: real TCP connections handed to it, a
real HTTP server as the container, requests signed by botocore. What it answers must be what
the Python path answers; what it does not take must come back whole."""

from __future__ import annotations

import http.server
import os
import re
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

_lane = pytest.importorskip("openmaker.api._lane", reason="the lane is not built")

KEY, SECRET, REGION = "AKIDLANE", "lane-secret", "us-east-1"
PAYLOAD = 6 * 1024 * 1024
UUID4 = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


class _Model(http.server.BaseHTTPRequestHandler):
    """The container: echoes its request, or answers as the body asks."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.seen.append((dict(self.headers), body))  # type: ignore[attr-defined]
        if body == b"fail":
            self._answer(400, b"no such thing", "text/plain")
        elif body == b"huge":
            self._answer(200, b"h" * (PAYLOAD + 1), "text/plain")
        elif body == b"chunked":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (b"one ", b"two ", b"three"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        elif body == b"control":  # a header no answer may carry on
            self._answer(200, b"c", "text/\x01plain")
        elif body == b"long head":
            self.send_response(200)
            for index in range(400):  # 80 KB: past what the lane reads of a head
                self.send_header(f"X-Filler-{index}", "f" * 190)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif body == b"endless":  # chunks past the cap, and more
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            piece = b"e" * 65536
            try:
                for _ in range(200):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            except OSError:
                pass  # the lane stopped reading: what a client past the cap gets
        elif body == b"pause":
            time.sleep(1)
            self._answer(200, b"paused", "text/plain")
        elif body == b"slow":
            time.sleep(3)
            self._answer(200, b"late", "text/plain")
        else:
            attributes = self.headers.get("X-Amzn-SageMaker-Custom-Attributes")
            self._answer(200, body, self.headers.get("Content-Type", ""), attributes)

    def _answer(self, status: int, body: bytes, kind: str, attributes: str | None = None) -> None:
        self.send_response(status)
        if kind:
            self.send_header("Content-Type", kind)
        if attributes:
            self.send_header("X-Amzn-SageMaker-Custom-Attributes", f"seen={attributes}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@dataclass
class Rig:
    lane: Any
    port: int  # where the container listens
    model: http.server.ThreadingHTTPServer
    errors: list[tuple[Any, ...]] = field(default_factory=list)

    def connect(self) -> socket.socket:
        """A client connection whose server end the lane owns."""
        with socket.create_server(("127.0.0.1", 0)) as listener:
            client = socket.create_connection(listener.getsockname())
            accepted, _ = listener.accept()
        self.lane.adopt(accepted.detach())
        client.settimeout(10)
        return client

    def seen(self) -> list[tuple[dict[str, str], bytes]]:
        return self.model.seen  # type: ignore[attr-defined]


@pytest.fixture
def rig() -> Iterator[Rig]:
    model = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Model)
    model.seen = []  # type: ignore[attr-defined]
    threading.Thread(target=model.serve_forever, daemon=True).start()
    errors: list[tuple[Any, ...]] = []

    def on_error(*args: Any) -> bytes:
        errors.append(args)
        return b"HTTP/1.1 424 Failed Dependency\r\ncontent-length: 5\r\n\r\nerror"

    lane = _lane.Lane(KEY, SECRET, REGION, 2.0, 1.0, 1.0, on_error)
    port = model.server_address[1]
    lane.set_route("ep", [("AllTraffic", 1.0, [("127.0.0.1", port, "AllTraffic/i-1")])])
    try:
        yield Rig(lane, port, model, errors)
    finally:
        lane.close()
        model.shutdown()
        model.server_close()


def signed(
    body: bytes,
    headers: dict[str, str] | None = None,
    path: str = "/endpoints/ep/invocations",
    secret: str = SECRET,
) -> bytes:
    """A request as botocore signs and sends it."""
    request = AWSRequest("POST", f"http://127.0.0.1:1{path}", data=body, headers=headers or {})
    SigV4Auth(Credentials(KEY, secret), "sagemaker", REGION).add_auth(request)
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1:1", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in request.headers.items() if k.lower() != "host"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


_streams: weakref.WeakKeyDictionary[socket.socket, BinaryIO] = weakref.WeakKeyDictionary()


def read_answer(client: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """The next answer on the connection (one reader a connection: it may read ahead)."""
    stream = _streams.get(client)
    if stream is None:
        stream = _streams[client] = client.makefile("rb")
    status = int(stream.readline().split()[1])
    headers = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = stream.read(int(headers["content-length"]))
    return status, headers, body


def given_back(rig: Rig) -> list[tuple[int, bytes]]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        returned = rig.lane.returned()
        if returned:
            return list(returned)
        time.sleep(0.01)
    raise AssertionError("nothing was given back")


def test_a_plain_invocation_is_answered_as_the_runtime_answers(rig: Rig) -> None:
    client = rig.connect()
    attributes = {"X-Amzn-SageMaker-Custom-Attributes": "trace=1", "Content-Type": "text/csv"}
    for body in (b"1,2,3", b"", b"x" * 200_000):
        client.sendall(signed(body, attributes))
        status, headers, answer = read_answer(client)
        assert (status, answer) == (200, body)
        assert headers["content-type"] == "text/csv"
        assert headers["x-amzn-invoked-production-variant"] == "AllTraffic"
        assert headers["x-amzn-sagemaker-custom-attributes"] == "seen=trace=1"
        assert UUID4.fullmatch(headers["x-amzn-requestid"].encode())
        assert headers["date"].endswith(" GMT") and "server" not in headers
    # The container got what the Python path passes on, and no more.
    passed, _ = rig.seen()[0]
    assert {k.lower() for k in passed} == {
        "host",
        "content-length",
        "content-type",
        "x-amzn-sagemaker-custom-attributes",
    }
    ((endpoint, variant, count, model, overhead),) = rig.lane.drain()
    assert (endpoint, variant, count) == ("ep", "AllTraffic", 3)
    for total, low, high in (model, overhead):  # microseconds: sum, least, greatest
        assert 0 <= low <= high and low * 3 <= total <= high * 3
    assert rig.lane.drain() == []  # taken: they start again from nothing
    client.close()


def test_a_chunked_answer_is_passed_on_whole(rig: Rig) -> None:
    client = rig.connect()
    client.sendall(signed(b"chunked"))
    assert read_answer(client)[2] == b"one two three"
    client.sendall(signed(b"again"))  # the container's connection is still usable
    assert read_answer(client)[2] == b"again"


@pytest.mark.parametrize(
    "sent",
    [
        signed(b"q", path="/endpoints/ep/invocations?x=1"),
        signed(b"bad signature", secret="not-the-secret"),
        signed(b"no route", path="/endpoints/other/invocations"),
        signed(b"m", {"X-Amzn-SageMaker-Target-Model": "a.tar.gz"}),
        signed(b"i", {"X-Amzn-SageMaker-Inference-Id": "x" * 65}),
        signed(b"x", {"X-Amzn-SageMaker-Custom-Attributes": "a" * 1025}),
        signed(b"a", path="/endpoints/ep/async-invocations"),
        signed(b"v", {"X-Amzn-SageMaker-Target-Variant": "Nowhere"}),
        signed(b"dup", {"Accept": "a"}).replace(b"\r\n\r\n", b"\r\nAccept: b\r\n\r\n", 1),
        signed(b"t").replace(b"HTTP/1.1", b"HTTP/1.0", 1),
        signed(b"u", {"X-Amzn-SageMaker-Inference-Id": "caf\u00e9".encode().decode("latin-1")}),
        b"GET /endpoints/ep/invocations HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /endpoints/ep/invocations HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST /endpoints/ep/invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 6291457\r\n\r\n",
        b"POST /endpoints/ep/invocations HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /endpoints/ep/invocations HTTP/1.1\r\nX: " + b"y" * 17000 + b"\r\n\r\n",
        b"\x00\xff garbage \r\n\r\n",
    ],
)
def test_what_the_lane_does_not_take_goes_back_whole(rig: Rig, sent: bytes) -> None:
    client = rig.connect()
    client.sendall(sent)
    ((fd, pending),) = given_back(rig)
    with socket.socket(fileno=fd) as returned:
        assert sent.startswith(pending) and len(pending) >= min(len(sent), 16384)
        returned.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")  # the same connection
    assert client.recv(100).startswith(b"HTTP/1.1 204")
    assert rig.seen() == []  # nothing reached the container


def test_an_answer_the_lane_cannot_pass_on_is_python_s_to_spell(rig: Rig) -> None:
    client = rig.connect()
    client.sendall(signed(b"fail"))
    assert read_answer(client) == (424, {"content-length": "5"}, b"error")
    endpoint, variant, stream, status, body, failure, model, total = rig.errors[0]
    assert (endpoint, variant, stream, status, body, failure) == (
        "ep",
        "AllTraffic",
        "AllTraffic/i-1",
        400,
        b"no such thing",
        None,
    )
    assert 0 <= model <= total
    client.sendall(signed(b"huge"))
    read_answer(client)
    assert rig.errors[1][3] == 200 and len(rig.errors[1][4]) > PAYLOAD
    # No container at all: the failure says why.
    rig.lane.set_route("ep", [("AllTraffic", 1.0, [("127.0.0.1", 1, "AllTraffic/i-9")])])
    client.sendall(signed(b"nobody"))
    read_answer(client)
    assert rig.errors[2][2] == "AllTraffic/i-9" and "refused" in rig.errors[2][5].lower()


def test_a_container_past_the_time_limit_is_given_up(rig: Rig) -> None:
    client = rig.connect()
    client.sendall(signed(b"slow"))
    assert read_answer(client)[0] == 424
    assert "no answer within 2 seconds" in rig.errors[0][5]


def test_requests_in_pieces_or_pipelined_are_answered_in_order(rig: Rig) -> None:
    client = rig.connect()
    whole = signed(b"first") + signed(b"second")
    for index in range(0, len(whole), 7):  # a few bytes at a time
        client.sendall(whole[index : index + 7])
        time.sleep(0.001)
    assert read_answer(client)[2] == b"first"
    assert read_answer(client)[2] == b"second"
    client.sendall(signed(b"third") + signed(b"fourth"))  # in one send
    assert [read_answer(client)[2] for _ in range(2)] == [b"third", b"fourth"]


def test_closing_and_idle_connections_end(rig: Rig) -> None:
    client = rig.connect()
    client.sendall(signed(b"last", {"Connection": "close"}))
    status, headers, _ = read_answer(client)
    assert (status, headers["connection"]) == (200, "close")
    assert client.recv(1) == b""
    idle = rig.connect()
    idle.sendall(signed(b"one"))
    read_answer(idle)
    assert idle.recv(1) == b""  # closed after keep_alive (1 s here) with nothing sent


def test_weights_and_target_variant_choose_the_instance(rig: Rig) -> None:
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Model)
    other.seen = []  # type: ignore[attr-defined]
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        rig.lane.set_route(
            "ep",
            [
                ("A", 1.0, [("127.0.0.1", rig.port, "A/i-1")]),
                ("B", 0.0, [("127.0.0.1", other.server_address[1], "B/i-1")]),
            ],
        )
        client = rig.connect()
        for _ in range(20):
            client.sendall(signed(b"w"))
            assert read_answer(client)[1]["x-amzn-invoked-production-variant"] == "A"
        client.sendall(signed(b"t", {"X-Amzn-SageMaker-Target-Variant": "B"}))
        assert read_answer(client)[1]["x-amzn-invoked-production-variant"] == "B"
        assert len(other.seen) == 1  # type: ignore[attr-defined]
        rig.lane.set_route("ep", None)  # gone: its requests go back
        gone = signed(b"gone")
        client.sendall(gone)
        ((fd, pending),) = given_back(rig)
        os.close(fd)
        assert pending == gone
    finally:
        other.shutdown()
        other.server_close()


def test_a_hostile_container_answer_is_refused(rig: Rig) -> None:
    """The container's code is anyone's: what it answers is checked before it is passed on."""
    client = rig.connect()
    for body, failure in (
        (b"control", "a header that cannot be passed on"),
        (b"long head", "not HTTP"),
        (b"endless", None),  # read to just past the cap, then refused as too large
    ):
        client.sendall(signed(body))
        assert read_answer(client)[0] == 424
        *_, status, answer, why, _, _ = rig.errors[-1]
        if failure is None:
            assert status == 200 and PAYLOAD < len(answer) < PAYLOAD + 2 * 65536
        else:
            assert failure in why
    client.sendall(signed(b"still served"))
    assert read_answer(client)[2] == b"still served"


def test_a_stopping_lane_writes_the_answers_under_way(rig: Rig) -> None:
    busy, idle = rig.connect(), rig.connect()
    busy.sendall(signed(b"pause"))
    deadline = time.monotonic() + 10
    while not rig.seen() and time.monotonic() < deadline:  # the container has it
        time.sleep(0.01)
    rig.lane.close()  # returns once the answer under way is written
    assert read_answer(busy)[2] == b"paused"
    assert busy.recv(1) == b"" and idle.recv(1) == b""  # then both are closed
