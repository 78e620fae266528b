"""The SageMaker Runtime API (rest-json, signing name `sagemaker`) on the server's address.

`InvokeEndpoint` is passed to an instance of the endpoint (openmaker/serving/proxy.py),
`InvokeEndpointWithResponseStream` relayed as an event stream as the container answers
(serving/stream.py), `InvokeEndpointAsync` put in the endpoint's queue
(serving/async_invoke.py).
Errors are AWS's: `ValidationError` (400) for a bad request or an unknown endpoint, `ModelError`
(424) with the container's status and message.
"""

from __future__ import annotations

import functools
import json
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from openmaker.api.credentials import Credentials
from openmaker.api.signed import signed_parts, signed_request
from openmaker.api.sigv4 import SignedRequest, verify
from openmaker.serving.async_invoke import INFERENCE_ID, accept, checked_inference_id
from openmaker.serving.proxy import CUSTOM_ATTRIBUTES, PASSED_HEADERS, InvocationError, Invoker
from openmaker.serving.stream import Stream, open_stream
from openmaker.shapes.errors import ServiceError

SIGNING_NAME = "sagemaker"
INVOKE = "/endpoints/{name}/invocations"
INVOKE_ASYNC = "/endpoints/{name}/async-invocations"
INVOKE_STREAM = "/endpoints/{name}/invocations-response-stream"
# Headers InvokeEndpointAsync reads (its body is the input given inline, else empty: the input
# is in S3).
ASYNC_HEADERS = (
    "X-Amzn-SageMaker-Content-Type",
    "X-Amzn-SageMaker-Accept",
    "X-Amzn-SageMaker-Custom-Attributes",
    "X-Amzn-SageMaker-Inference-Id",
    "X-Amzn-SageMaker-InputLocation",
    "X-Amzn-SageMaker-RequestTTLSeconds",
    "X-Amzn-SageMaker-InvocationTimeoutSeconds",
    "X-Amzn-SageMaker-S3OutputPathExtension",
    "X-Amzn-SageMaker-Filename",
)
# InvokeEndpointWithResponseStream names Accept with SageMaker's prefix.
STREAM_ACCEPT = "X-Amzn-SageMaker-Accept"
EVENT_STREAM = "application/vnd.amazon.eventstream"
# Invocation bodies are at most 6 MiB; a little more is read before the request is refused.
MAX_BODY_BYTES = 7 * 1024 * 1024
PAYLOAD_BYTES = 6 * 1024 * 1024
# EndpointName as the model constrains it: what is not one names no endpoint.
ENDPOINT_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")
TARGET_VARIANT = "X-Amzn-SageMaker-Target-Variant"
CUSTOM_ATTRIBUTES_CHARS = 1024


class ValidationError(ServiceError):
    """The runtime's own name for a refused request (SageMaker's is ValidationException)."""

    code = "ValidationError"
    http_status = 400


def runtime_routes(
    credentials: Credentials, region: str, account_id: str, invoker: Invoker
) -> list[Route]:
    async def invoke_stream(request: Request) -> Response:
        request_id = str(uuid.uuid4())
        received = time.perf_counter()
        try:
            name, body, headers = await _checked(request, credentials, region, account_id)
            if STREAM_ACCEPT in request.headers:
                headers["Accept"] = request.headers[STREAM_ACCEPT]
            stream = await run_in_threadpool(
                open_stream,
                invoker,
                name,
                body,
                headers,
                request.headers.get(TARGET_VARIANT),
                invoker.invocation_seconds,
                received,
            )
        except InvocationError as exc:
            return error_response(exc.code, exc.status, exc.message, request_id, exc.extra)
        except ServiceError as exc:
            return error_response(exc.code, exc.http_status, exc.message, request_id)
        return StreamingResponse(
            _relay(stream),
            media_type=EVENT_STREAM,
            headers={
                "X-Amzn-SageMaker-Content-Type": stream.content_type,
                "x-Amzn-Invoked-Production-Variant": stream.variant,
                "x-amzn-RequestId": request_id,
                **stream.headers,
            },
        )

    async def invoke_async(request: Request) -> Response:
        request_id = str(uuid.uuid4())
        try:
            body = await _body(request)
            verify(signed_request(request, body), credentials, region, {SIGNING_NAME})
            name = _endpoint_name(request.path_params["name"], account_id)
            headers = {h: request.headers[h] for h in ASYNC_HEADERS if h in request.headers}
            _check_attributes(headers)
            answer = await run_in_threadpool(accept, invoker.endpoints, name, headers, body)
        except InvocationError as exc:
            return error_response(exc.code, exc.status, exc.message, request_id, exc.extra)
        except ServiceError as exc:
            return error_response(exc.code, exc.http_status, exc.message, request_id)
        located = {"X-Amzn-SageMaker-OutputLocation": answer["OutputLocation"]}
        if "FailureLocation" in answer:
            located["X-Amzn-SageMaker-FailureLocation"] = answer["FailureLocation"]
        return JSONResponse(
            {"InferenceId": answer["InferenceId"]},
            status_code=202,
            headers={"x-amzn-RequestId": request_id, **located},
        )

    return [
        Route(INVOKE, Invocations(credentials, region, account_id, invoker), methods=["POST"]),
        Route(INVOKE_STREAM, invoke_stream, methods=["POST"]),
        Route(INVOKE_ASYNC, invoke_async, methods=["POST"]),
    ]


async def _checked(
    request: Request, credentials: Credentials, region: str, account_id: str
) -> tuple[str, bytes, dict[str, str]]:
    """A signed invocation's endpoint name, body and the headers passed to the container."""
    body = await _body(request)
    signed = signed_request(request, body)
    name, headers = checked_invocation(
        signed, request.path_params["name"], credentials, region, account_id
    )
    return name, body, headers


def checked_invocation(
    signed: SignedRequest, name: str, credentials: Credentials, region: str, account_id: str
) -> tuple[str, dict[str, str]]:
    """A signed invocation's endpoint name and the headers passed to the container (the first
    value of each); ServiceError: refused."""
    verify(signed, credentials, region, {SIGNING_NAME})
    name = _endpoint_name(name, account_id)
    if len(signed.body) > PAYLOAD_BYTES:
        raise _too_large()
    headers = {}
    for header in PASSED_HEADERS:
        values = signed.headers.get(header.lower())
        if values:
            headers[header] = values[0]
    _check_attributes(headers)
    inference_id = headers.get(INFERENCE_ID[0])
    if inference_id is not None:
        checked_inference_id(inference_id)
    return name, headers


def _check_attributes(headers: dict[str, str]) -> None:
    if len(headers.get(CUSTOM_ATTRIBUTES, "")) > CUSTOM_ATTRIBUTES_CHARS:
        raise ValidationError(
            f"1 validation error detected: Value at 'customAttributes' failed to "
            f"satisfy constraint: Member must have length less than or equal to "
            f"{CUSTOM_ATTRIBUTES_CHARS}"
        )


async def _relay(stream: Stream) -> AsyncIterator[bytes]:
    """The stream's events, each passed on as soon as it is read; the container's connection
    closed however the relay ends (a client that goes away included)."""
    events = stream.events()
    try:
        while True:
            event = await run_in_threadpool(next, events, None)
            if event is None:
                return
            yield event
    finally:
        await run_in_threadpool(stream.close)


@functools.lru_cache(maxsize=256)
def _is_endpoint_name(name: str) -> bool:
    """Whether `name` may name an endpoint (a client names the same one again and again)."""
    return ENDPOINT_NAME.fullmatch(name) is not None


def _endpoint_name(name: str, account_id: str) -> str:
    if not _is_endpoint_name(name):
        shown = json.dumps(name[:100], ensure_ascii=True)
        raise ValidationError(
            f"1 validation error detected: Value {shown} at 'endpointName' failed to satisfy "
            "constraint: Member must satisfy regular expression pattern: "
            "^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}"
        )
    return name


def error_response(
    code: str, status: int, message: str, request_id: str, extra: dict[str, Any] | None = None
) -> Response:
    """A rest-json error: the code in `x-amzn-ErrorType`, the message and members in the
    body."""
    return Response(
        _error_body(message, extra),
        status_code=status,
        media_type="application/json",
        headers={"x-amzn-RequestId": request_id, "x-amzn-ErrorType": code},
    )


def _error_body(message: str, extra: dict[str, Any] | None) -> bytes:
    return json.dumps(
        {"Message": message, **(extra or {})}, ensure_ascii=True, separators=(",", ":")
    ).encode("ascii")


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _Disconnected(Exception):
    """The client went away before its request's body was read whole."""


class Invocations:
    """InvokeEndpoint as a bare ASGI application: the runtime's busiest request skips the
    framework's routing, middleware and request and response objects, which cost the server
    more CPU than the rest of the invocation (bench/invoke.py). Its checks are the other
    routes' (`checked_invocation`), its answers the same bytes."""

    def __init__(
        self, credentials: Credentials, region: str, account_id: str, invoker: Invoker
    ) -> None:
        self.credentials, self.region, self.account_id = credentials, region, account_id
        self.invoker = invoker

    @staticmethod
    def endpoint_of(scope: Scope) -> str | None:
        """The endpoint an `InvokeEndpoint` request names (as its route would match it: one
        path segment), None unless the request is one."""
        path: str = scope["path"]
        if scope["method"] != "POST" or not path.startswith("/endpoints/"):
            return None
        name, slash, rest = path[len("/endpoints/") :].partition("/")
        return name if slash and rest == "invocations" and name else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        received = time.perf_counter()  # OverheadLatency counts from here
        try:
            body = await _asgi_body(scope, receive)
        except _Disconnected:
            return
        except ServiceError as exc:
            request_id = request_id_now()
            status, head, data = error_parts(exc.code, exc.http_status, exc.message, request_id)
        else:
            status, head, data = await self.answer(
                scope["method"],
                scope.get("raw_path", b"/"),
                scope.get("query_string", b""),
                scope["headers"],
                scope.get("path_params", {}).get("name") or self.endpoint_of(scope) or "",
                body,
                received,
            )
        await send({"type": "http.response.start", "status": status, "headers": head})
        await send({"type": "http.response.body", "body": data})

    async def answer(
        self,
        method: str,
        raw_path: bytes,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        name: str,
        body: bytes,
        received: float,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """An invocation's answer: status, headers (lower-case names; the length among them)
        and body. `headers`: the request's, lower-case names; `name`: the endpoint its path
        names; `received`: when it arrived (time.perf_counter)."""
        request_id = request_id_now()
        try:
            signed = signed_parts(method, raw_path, query, headers, body)
            name, passed = checked_invocation(
                signed, name, self.credentials, self.region, self.account_id
            )
            target = signed.headers.get(TARGET_VARIANT.lower())
            answer = await self.invoker.invoke_async(
                name, body, passed, target[0] if target else None, received
            )
        except InvocationError as exc:
            return error_parts(exc.code, exc.status, exc.message, request_id, exc.extra)
        except ServiceError as exc:
            return error_parts(exc.code, exc.http_status, exc.message, request_id)
        head = [
            (b"content-length", str(len(answer.body)).encode("latin-1")),
            (b"content-type", answer.content_type.encode("latin-1")),
            (b"x-amzn-invoked-production-variant", answer.variant.encode("latin-1")),
            (b"x-amzn-requestid", request_id.encode("latin-1")),
        ]
        head += [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers.items()
        ]
        return 200, head, answer.body


# A version 4 UUID's fixed bits: the version's nibble and the variant's two bits.
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def request_id_now() -> str:
    """A request ID in a UUID's form. Not a secret, so not from the system's random source:
    uuid4's read of it cost several µs of every invocation under load (and uuid.UUID's
    constructor and str() over 1 µs more: the bits are set and spelled out here)."""
    digits = f"{random.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET:032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


async def _asgi_body(scope: Scope, receive: Receive) -> bytes:
    """The request's body; refused once past MAX_BODY_BYTES, or at once when its announced
    length is (a client announcing a gigabyte is not waited for)."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > MAX_BODY_BYTES:
            raise _too_large()
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large()
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def error_parts(
    code: str, status: int, message: str, request_id: str, extra: dict[str, Any] | None = None
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """`error_response`'s status, headers and body, for the bare handlers."""
    body = _error_body(message, extra)
    head = [
        (b"content-length", str(len(body)).encode("latin-1")),
        (b"content-type", b"application/json"),
        (b"x-amzn-requestid", request_id.encode("latin-1")),
        (b"x-amzn-errortype", code.encode("latin-1")),
    ]
    return status, head, body


def _too_large() -> ValidationError:
    return ValidationError(
        f"Received payload is larger than the maximum of {PAYLOAD_BYTES} bytes an endpoint takes"
    )


async def _body(request: Request) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large()
        chunks.append(chunk)
    return b"".join(chunks)
