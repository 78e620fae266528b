"""The SageMaker Runtime API (rest-json, signing name `sagemaker`) on the server's address.

openmaker serves no endpoints yet: every invocation names an endpoint that does not exist,
and gets AWS's answer for one — `ValidationError` (HTTP 400), "Endpoint X of account Y not
found." — instead of a bare 404 that no client can read.
"""

from __future__ import annotations

import json
import uuid

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from openmaker.api.credentials import Credentials
from openmaker.api.signed import signed_request
from openmaker.api.sigv4 import verify
from openmaker.shapes.errors import ServiceError

SIGNING_NAME = "sagemaker"
# InvokeEndpoint, InvokeEndpointAsync, InvokeEndpointWithResponseStream.
PATHS = (
    "/endpoints/{name}/invocations",
    "/endpoints/{name}/async-invocations",
    "/endpoints/{name}/invocations-response-stream",
)
# Invocation bodies are at most 6 MiB; a little more is read before the request is refused.
MAX_BODY_BYTES = 7 * 1024 * 1024


class ValidationError(ServiceError):
    """The runtime's own name for a refused request (SageMaker's is ValidationException)."""

    code = "ValidationError"
    http_status = 400


def runtime_routes(credentials: Credentials, region: str, account_id: str) -> list[Route]:
    async def invoke(request: Request) -> Response:
        request_id = str(uuid.uuid4())
        try:
            body = await _body(request)
            verify(signed_request(request, body), credentials, region, {SIGNING_NAME})
            name = request.path_params["name"]
            raise ValidationError(f"Endpoint {name} of account {account_id} not found.")
        except ServiceError as exc:
            return error_response(exc, request_id)

    return [Route(path, invoke, methods=["POST"]) for path in PATHS]


def error_response(exc: ServiceError, request_id: str) -> Response:
    """A rest-json error: the code in `x-amzn-ErrorType`, the message in the body."""
    body = json.dumps({"Message": exc.message}, ensure_ascii=True, separators=(",", ":"))
    return Response(
        body,
        status_code=exc.http_status,
        media_type="application/json",
        headers={"x-amzn-RequestId": request_id, "x-amzn-ErrorType": exc.code},
    )


async def _body(request: Request) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ValidationError(
                "Received payload is larger than the maximum of 6291456 bytes an endpoint takes"
            )
        chunks.append(chunk)
    return b"".join(chunks)

