"""The HTTP server's application: AWS JSON 1.1 requests in, AWS JSON responses and errors out.

SageMaker (`X-Amz-Target: SageMaker.<Operation>`) and CloudWatch Logs
(`Logs_20140328.<Operation>`) share one address; every request must carry a valid SigV4
signature by the server's key pair before anything else happens.
"""

from __future__ import annotations

import json
import logging
import traceback
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import OperationalError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from openmaker.api.credentials import Credentials
from openmaker.api.operations import Backend, Handler
from openmaker.api.sigv4 import SignedRequest, verify
from openmaker.api.wire import from_wire, to_wire
from openmaker.spec.errors import (
    SerializationError,
    ServiceError,
    ThrottlingException,
    UnknownOperation,
)
from openmaker.spec.model import operation_model
from openmaker.spec.validate import validate_input

JSON_TYPE = "application/x-amz-json-1.1"
# No SageMaker or Logs request comes near this; a bigger body is refused unread.
MAX_BODY_BYTES = 16 * 1024 * 1024
log = logging.getLogger("openmaker.api")


@dataclass(frozen=True)
class Service:
    name: str  # the botocore service name
    signing_name: str
    handlers: dict[str, Handler]


def create_app(backend: Backend, credentials: Credentials) -> Starlette:
    services = {
        "SageMaker": Service("sagemaker", "sagemaker", backend.sagemaker()),
        "Logs_20140328": Service("logs", "logs", backend.logs_operations()),
    }

    async def dispatch(request: Request) -> Response:
        request_id = str(uuid.uuid4())
        try:
            body = await _body(request)
            target = request.headers.get("x-amz-target", "")
            prefix, _, operation = target.partition(".")
            service = services.get(prefix)
            # Nothing is looked at before the signature is: not even whether the target exists.
            verify(_signed(request, body), credentials, service and service.signing_name)
            if service is None or not operation:
                raise UnknownOperation(f"Unknown operation {target or '(no X-Amz-Target)'}")
            handler = service.handlers.get(operation)
            if handler is None:
                raise UnknownOperation(
                    f"openmaker does not implement {service.name} operation {operation}"
                )
            result = await run_in_threadpool(_call, service, operation, handler, body)
        except ServiceError as exc:
            return _error(exc, request_id)
        except Exception:
            log.error("request %s failed:\n%s", request_id, traceback.format_exc())
            return _error(ServiceError("An internal error occurred."), request_id)
        return JSONResponse(
            result,
            media_type=JSON_TYPE,
            headers={"x-amzn-RequestId": request_id},
        )

    async def health(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/", dispatch, methods=["POST"]),
            Route("/openmaker/health", health, methods=["GET"]),
        ]
    )


def _call(service: Service, operation: str, handler: Handler, body: bytes) -> dict[str, Any]:
    model = operation_model(operation, service.name)
    try:
        raw = json.loads(body or b"{}")
    except ValueError as exc:
        raise SerializationError(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise SerializationError("The request body must be a JSON object")
    params = from_wire(model.input_shape, raw)
    validate_input(operation, params, service.name)
    try:
        result = handler(params)
    except OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise ThrottlingException("Rate exceeded: the job database is busy") from None
        raise
    return to_wire(model.output_shape, result) if model.output_shape is not None else {}


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise SerializationError(f"The request body is larger than {MAX_BODY_BYTES} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise SerializationError(f"The request body is larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _signed(request: Request, body: bytes) -> SignedRequest:
    headers: dict[str, list[str]] = {}
    for name, value in request.headers.items():
        headers.setdefault(name.lower(), []).append(value)
    return SignedRequest(
        method=request.method,
        raw_path=request.scope.get("raw_path", b"/").decode("latin-1").split("?", 1)[0],
        raw_query=request.scope.get("query_string", b"").decode("latin-1"),
        headers=headers,
        body=body,
    )


def _error(exc: ServiceError, request_id: str) -> Response:
    return JSONResponse(
        {"__type": exc.code, "message": exc.message},
        status_code=exc.http_status,
        media_type=JSON_TYPE,
        headers={"x-amzn-RequestId": request_id, "x-amzn-ErrorType": exc.code},
    )
