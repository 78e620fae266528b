"""The SageMaker Runtime API (rest-json, signing name `sagemaker`) on the server's address.

`InvokeEndpoint` is passed to an instance of the endpoint (openmaker/serving/proxy.py),
`InvokeEndpointWithResponseStream` relayed as an event stream as the container answers
(serving/stream.py), `InvokeEndpointAsync` put in the endpoint's queue
(serving/async_invoke.py).
Errors are AWS's: `ValidationError` (400) for a bad request or an unknown endpoint, `ModelError`
(424) with the container's status and message.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from openmaker.api.credentials import Credentials
from openmaker.api.signed import signed_request
from openmaker.api.sigv4 import verify
from openmaker.serving.async_invoke import accept
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
    async def invoke(request: Request) -> Response:
        received = time.perf_counter()  # OverheadLatency counts from here
        request_id = str(uuid.uuid4())
        try:
            name, body, headers = await _checked(request, credentials, region, account_id)
            answer = await invoker.invoke_async(
                name, body, headers, request.headers.get(TARGET_VARIANT), received
            )
        except InvocationError as exc:
            return error_response(exc.code, exc.status, exc.message, request_id, exc.extra)
        except ServiceError as exc:
            return error_response(exc.code, exc.http_status, exc.message, request_id)
        return Response(
            answer.body,
            media_type=None,
            headers={
                "Content-Type": answer.content_type,
                "x-Amzn-Invoked-Production-Variant": answer.variant,
                "x-amzn-RequestId": request_id,
                **answer.headers,
            },
        )

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
        Route(INVOKE, invoke, methods=["POST"]),
        Route(INVOKE_STREAM, invoke_stream, methods=["POST"]),
        Route(INVOKE_ASYNC, invoke_async, methods=["POST"]),
    ]


async def _checked(
    request: Request, credentials: Credentials, region: str, account_id: str
) -> tuple[str, bytes, dict[str, str]]:
    """A signed invocation's endpoint name, body and the headers passed to the container."""
    body = await _body(request)
    verify(signed_request(request, body), credentials, region, {SIGNING_NAME})
    name = _endpoint_name(request.path_params["name"], account_id)
    if len(body) > PAYLOAD_BYTES:
        raise ValidationError(
            f"Received payload is larger than the maximum of {PAYLOAD_BYTES} bytes an "
            "endpoint takes"
        )
    headers = {h: request.headers[h] for h in PASSED_HEADERS if h in request.headers}
    _check_attributes(headers)
    return name, body, headers


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


def _endpoint_name(name: str, account_id: str) -> str:
    if not ENDPOINT_NAME.fullmatch(name):
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
    body = json.dumps(
        {"Message": message, **(extra or {})}, ensure_ascii=True, separators=(",", ":")
    )
    return Response(
        body,
        status_code=status,
        media_type="application/json",
        headers={"x-amzn-RequestId": request_id, "x-amzn-ErrorType": code},
    )


async def _body(request: Request) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ValidationError(
                f"Received payload is larger than the maximum of {PAYLOAD_BYTES} bytes an "
                "endpoint takes"
            )
        chunks.append(chunk)
    return b"".join(chunks)
