"""InvokeEndpoint requests no client builds, to a real `openmaker server`: each is refused with
the runtime's error for it, naming the problem, before any endpoint is looked for."""

from __future__ import annotations

import http.client
import json
import socket
import uuid
from typing import Any
from urllib.parse import urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from openmaker.api.runtime import request_id_now
from tests.apiserver import ApiServer

PAYLOAD_BYTES = 6 * 1024 * 1024


def post(
    server: ApiServer,
    path: str,
    body: bytes,
    headers: dict[str, str] | None = None,
    secret: str | None = None,
    signed: bool = True,
) -> tuple[int, dict[str, str], Any]:
    """POST to the runtime API signed as botocore signs (with `secret`, if given, instead of
    the server's): status, headers (lower-case names) and the decoded JSON answer."""
    url = server.env["AWS_ENDPOINT_URL_SAGEMAKER"] + path
    request = AWSRequest("POST", url, data=body, headers=headers or {})
    keys = Credentials(
        server.env["AWS_ACCESS_KEY_ID"], secret or server.env["AWS_SECRET_ACCESS_KEY"]
    )
    if signed:
        SigV4Auth(keys, "sagemaker", server.env["AWS_REGION"]).add_auth(request)
    return exchange(server, path, {k: str(v) for k, v in request.headers.items()}, [body])


def exchange(
    server: ApiServer, path: str, headers: dict[str, str], chunks: list[bytes]
) -> tuple[int, dict[str, str], Any]:
    """Send the head and `chunks` (perhaps less than the length announced), then read the
    answer."""
    address = urlsplit(server.env["AWS_ENDPOINT_URL_SAGEMAKER"])
    assert address.hostname is not None
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    try:
        connection.putrequest("POST", path)
        for name, value in headers.items():
            connection.putheader(name, value)
        if "Content-Length" not in headers:
            connection.putheader("Content-Length", str(sum(len(c) for c in chunks)))
        connection.endheaders()
        try:
            for chunk in chunks:
                connection.send(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed before taking it all
        answer = connection.getresponse()
        named = {k.lower(): v for k, v in answer.getheaders()}
        data = answer.read()
        json_body = named.get("content-type") == "application/json"
        return answer.status, named, json.loads(data) if json_body else data
    finally:
        connection.close()


def refused(answer: tuple[int, dict[str, str], Any]) -> tuple[int, str, str]:
    status, headers, body = answer
    assert headers.get("x-amzn-requestid"), headers
    return status, headers.get("x-amzn-errortype", ""), body.get("Message", "")


def test_invocations_are_refused_naming_the_problem(api_server: ApiServer) -> None:
    path = "/endpoints/nowhere/invocations"
    status, code, message = refused(post(api_server, path, b"x", signed=False))
    assert (status, code) == (403, "MissingAuthenticationTokenException")

    status, code, message = refused(post(api_server, path, b"x", secret="not-the-secret"))
    assert (status, code) == (400, "InvalidSignatureException")
    assert "signature" in message

    status, code, message = refused(post(api_server, "/endpoints/bad_name!/invocations", b"x"))
    assert (status, code) == (400, "ValidationError")
    assert "endpointName" in message

    answer = post(api_server, path, b"x")
    status, code, message = refused(answer)
    assert (status, code) == (400, "ValidationError")
    assert "Endpoint nowhere of account" in message and "not found" in message
    assert "server" not in answer[1] and answer[1]["date"]  # AWS's answers name no server

    attributes = {"X-Amzn-SageMaker-Custom-Attributes": "a" * 1025}
    status, code, message = refused(post(api_server, path, b"x", attributes))
    assert (status, code) == (400, "ValidationError")
    assert "customAttributes" in message

    status, code, message = refused(post(api_server, path, b"x" * (PAYLOAD_BYTES + 1)))
    assert (status, code) == (400, "ValidationError")
    assert "larger than" in message


def test_an_announced_oversized_body_is_refused_without_waiting_for_it(
    api_server: ApiServer,
) -> None:
    # A gigabyte announced, a kilobyte sent: the answer comes without the rest (the old
    # runtime waited for it until the client gave up).
    path = "/endpoints/nowhere/invocations"
    head = {"Content-Type": "text/plain", "Content-Length": str(2**30)}
    status, code, message = refused(exchange(api_server, path, head, [b"x" * 1024]))
    assert (status, code) == (400, "ValidationError")
    assert "larger than" in message


def test_only_posts_to_one_endpoint_s_invocations_are_invocations(api_server: ApiServer) -> None:
    status, _, _ = post(api_server, "/endpoints/a/b/invocations", b"x")
    assert status == 404
    status, _, _ = post(api_server, "/endpoints//invocations", b"x")
    assert status == 404
    status, _, _ = post(api_server, "/endpoints/nowhere/invocationsX", b"x")
    assert status == 404


def signed_head(server: ApiServer, path: str, body: bytes, extra: dict[str, str]) -> bytes:
    """A whole signed request (head and body) as bytes, for clients no library models."""
    url = server.env["AWS_ENDPOINT_URL_SAGEMAKER"] + path
    request = AWSRequest("POST", url, data=body, headers=extra)
    keys = Credentials(server.env["AWS_ACCESS_KEY_ID"], server.env["AWS_SECRET_ACCESS_KEY"])
    SigV4Auth(keys, "sagemaker", server.env["AWS_REGION"]).add_auth(request)
    host = urlsplit(url).netloc
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in request.headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read_answers(server: ApiServer, sent: bytes, count: int) -> list[tuple[int, str, bytes]]:
    """Send `sent` in one write, then read `count` answers (status, Connection header, body)
    off the connection in order, from one buffer (answers may arrive together)."""
    address = urlsplit(server.env["AWS_ENDPOINT_URL_SAGEMAKER"])
    assert address.hostname is not None and address.port is not None
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(sent)
        answers = []
        with sock.makefile("rb") as stream:
            for _ in range(count):
                status = int(stream.readline().split()[1])
                headers = {}
                while (line := stream.readline().rstrip(b"\r\n")) != b"":
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = stream.read(int(headers["content-length"]))
                answers.append((status, headers.get("connection", ""), body))
        return answers


def test_pipelined_invocations_are_answered_in_order(api_server: ApiServer) -> None:
    # The first is answered by the protocol itself (openmaker/api/invoke_front.py), the
    # second waits behind it and goes through uvicorn's path.
    # The first looks its endpoint up (a thread's hop); the second, unsigned, is refused at
    # once: answered out of turn, it would come first.
    first = signed_head(api_server, "/endpoints/first/invocations", b"1", {})
    second = b"POST /endpoints/second/invocations HTTP/1.1\r\nContent-Length: 1\r\n\r\n2"
    answers = read_answers(api_server, first + second, 2)
    assert [a[0] for a in answers] == [400, 403]
    assert b"Endpoint first of" in answers[0][2]
    assert b"Missing Authentication Token" in answers[1][2]


def test_an_invocation_asking_to_close_is_answered_then_closed(api_server: ApiServer) -> None:
    closing = signed_head(api_server, "/endpoints/last/invocations", b"x", {"Connection": "close"})
    ((status, connection, body),) = read_answers(api_server, closing, 1)
    assert (status, connection) == (400, "close")
    assert b"Endpoint last of" in body


def test_request_ids_are_version_4_uuids() -> None:
    """The request IDs made from bits by hand read as uuid4's would."""
    for _ in range(2000):
        text = request_id_now()
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
