"""The SageMaker Runtime API (rest-json, signing name `sagemaker`) on the server's address.

`InvokeEndpoint` is passed to an instance of the endpoint (openmaker/serving/proxy.py); the
asynchronous and streaming invocations are refused, saying so, until openmaker serves them.
Errors are AWS's: `ValidationError` (400) for a bad request or an unknown endpoint, `ModelError`
(424) with the container's status and message.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from openmaker.api.credentials import Credentials
from openmaker.api.signed import signed_request
from openmaker.api.sigv4 import verify
from openmaker.serving.proxy import CUSTOM_ATTRIBUTES, PASSED_HEADERS, InvocationError, Invoker
from openmaker.shapes.errors import ServiceError

SIGNING_NAME = "sagemaker"
INVOKE = "/endpoints/{name}/invocations"
# InvokeEndpointAsync, InvokeEndpointWithResponseStream: not served yet.
NOT_YET = (
    "/endpoints/{name}/async-invocations",
    "/endpoints/{name}/invocations-response-stream",
)
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
        request_id = str(uuid.uuid4())
        try:
            body = await _body(request)
            verify(signed_request(request, body), credentials, region, {SIGNING_NAME})
            name = _endpoint_name(request.path_params["name"], account_id)
            if len(body) > PAYLOAD_BYTES:
                raise ValidationError(
                    f"Received payload is larger than the maximum of {PAYLOAD_BYTES} bytes an "
                    "endpoint takes"
                )
            headers = {h: request.headers[h] for h in PASSED_HEADERS if h in request.headers}
            if len(headers.get(CUSTOM_ATTRIBUTES, "")) > CUSTOM_ATTRIBUTES_CHARS:
                raise ValidationError(
                    f"1 validation error detected: Value at 'customAttributes' failed to "
                    f"satisfy constraint: Member must have length less than or equal to "
                    f"{CUSTOM_ATTRIBUTES_CHARS}"
                )
            answer = await run_in_threadpool(
                invoker.invoke, name, body, headers, request.headers.get(TARGET_VARIANT)
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

    async def not_yet(request: Request) -> Response:
        request_id = str(uuid.uuid4())
        try:
            body = await _body(request)
            verify(signed_request(request, body), credentials, region, {SIGNING_NAME})
            name = _endpoint_name(request.path_params["name"], account_id)
            raise ValidationError(
                f"openmaker serves InvokeEndpoint only, not yet asynchronous or streamed "
                f"invocations (endpoint {name})"
            )
        except ServiceError as exc:
            return error_response(exc.code, exc.http_status, exc.message, request_id)

    return [
        Route(INVOKE, invoke, methods=["POST"]),
        *(Route(path, not_yet, methods=["POST"]) for path in NOT_YET),
    ]


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
