"""The HTTP server's application: AWS JSON, rest-json and query-protocol requests in, AWS
answers out.

SageMaker (`X-Amz-Target: SageMaker.<Operation>`), CloudWatch Logs
(`Logs_20140328.<Operation>`), CloudWatch's metric reads (`GraniteServiceVersion20100801.`),
SageMaker Metrics (rest-json, `POST /BatchGetMetrics`) and the query services STS and IAM
(form-encoded, told apart by the service their signature is scoped to) share one address; every
request must carry a valid SigV4 signature by the server's key pair before anything else
happens.
"""

from __future__ import annotations

import json
import logging
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from openmaker.api import cloudwatch_metrics, iam, query, sagemaker_metrics, sts
from openmaker.api.cloudwatch_metrics import CloudWatchMetrics
from openmaker.api.console.routes import console_routes
from openmaker.api.credentials import Credentials
from openmaker.api.operations import Backend, Handler, QuickHandler
from openmaker.api.rendered import RenderedAnswers
from openmaker.api.runtime import runtime_routes
from openmaker.api.sagemaker_metrics import SageMakerMetrics
from openmaker.api.signed import signed_request
from openmaker.api.sigv4 import verify
from openmaker.api.wire import from_wire, parse_document, range_problems, to_wire
from openmaker.shapes.errors import ServiceError, UnknownOperation, ValidationException
from openmaker.shapes.model import operation_model
from openmaker.shapes.validate import error_message, validate_input

JSON_TYPE = "application/x-amz-json-1.1"
# No SageMaker or Logs request openmaker serves comes near this; a bigger body is refused
# without being read whole.
MAX_BODY_BYTES = 4 * 1024 * 1024
# A request is read and checked on the event loop (for a quick answer) only up to this size:
# a bigger one could hold the loop; it goes to a worker thread whole.
QUICK_BODY_BYTES = 4096
log = logging.getLogger("openmaker.api")


class RequestTooLarge(ServiceError):
    code = "RequestEntityTooLargeException"
    http_status = 413


@dataclass(frozen=True)
class Service:
    name: str  # the botocore service name
    signing_name: str
    handlers: dict[str, Handler]
    content_type: str = JSON_TYPE
    # Checks a request against the model (a service may word its problems its own way).
    validate: Callable[[str, dict[str, Any], str], None] = validate_input
    # Operations that may be answered on the event loop, without a worker thread's hop.
    quick: dict[str, QuickHandler] = field(default_factory=dict)
    rendered: RenderedAnswers = field(default_factory=RenderedAnswers)


def create_app(backend: Backend, credentials: Credentials) -> Starlette:
    settings = backend.jobs.settings
    services = {
        "SageMaker": Service(
            "sagemaker",
            "sagemaker",
            backend.handlers.of("sagemaker"),
            quick=backend.handlers.quick_of("sagemaker"),
        ),
        "Logs_20140328": Service("logs", "logs", backend.handlers.of("logs")),
        cloudwatch_metrics.TARGET_PREFIX: Service(
            cloudwatch_metrics.SERVICE,
            "monitoring",
            CloudWatchMetrics(
                backend.metrics, settings.account_id, backend.endpoint_metrics
            ).handlers(),
            cloudwatch_metrics.CONTENT_TYPE,
            cloudwatch_metrics.validate,
        ),
    }
    # rest-json services: one operation per path.
    paths = {
        sagemaker_metrics.PATH: (
            Service(
                sagemaker_metrics.SERVICE,
                "sagemaker",
                SageMakerMetrics(backend.metrics).handlers(),
                sagemaker_metrics.CONTENT_TYPE,
            ),
            "BatchGetMetrics",
        )
    }
    # The query services, by signing name (the only thing that tells them apart).
    query_services = {
        s.signing_name: s
        for s in (sts.service(settings.account_id), iam.service(settings.account_id))
    }
    region = settings.region
    signing_names = {s.signing_name for s in services.values()}

    async def dispatch(request: Request) -> Response:
        headers = request.headers
        if query.is_query_request(headers.get("content-type", ""), headers.get("x-amz-target")):
            return await query_dispatch(request, str(uuid.uuid4()))
        target = request.headers.get("x-amz-target", "")
        prefix, _, operation = target.partition(".")
        service = services.get(prefix)
        if service is None or not operation:
            unknown = f"Unknown operation {target or '(no X-Amz-Target)'}"
            return await _serve(request, None, unknown, credentials, region, signing_names)
        return await _serve(request, service, operation, credentials, region, signing_names)

    async def dispatch_path(request: Request) -> Response:
        service, operation = paths[request.url.path]
        return await _serve(request, service, operation, credentials, region, signing_names)

    async def query_dispatch(request: Request, request_id: str) -> Response:
        service = None
        try:
            body = await _body(request)
            scope = verify(signed_request(request, body), credentials, region, query_services)
            service = query_services[scope.service]
            answer = await run_in_threadpool(query.call, service, body, request_id)
        except ServiceError as exc:
            return _query_error(service, exc, request_id)
        except Exception:
            log.error("request %s failed:\n%s", request_id, traceback.format_exc())
            return _query_error(service, ServiceError("An internal error occurred."), request_id)
        return Response(
            answer, media_type=query.CONTENT_TYPE, headers={"x-amzn-RequestId": request_id}
        )

    async def health(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/", dispatch, methods=["POST"]),
            *(Route(path, dispatch_path, methods=["POST"]) for path in paths),
            Route("/openmaker/health", health, methods=["GET"]),
            *runtime_routes(credentials, region, backend.jobs.settings.account_id, backend.invoker),
            *console_routes(backend, credentials, region),
        ]
    )


async def _serve(
    request: Request,
    service: Service | None,
    operation: str,
    credentials: Credentials,
    region: str,
    signing_names: set[str],
) -> Response:
    """Check the signature, then answer `operation` of `service` (None: `operation` says why
    the request names nothing served)."""
    request_id = str(uuid.uuid4())
    try:
        body = await _body(request)
        # Nothing is looked at before the signature is: not even whether the target exists.
        scope = {service.signing_name} if service else signing_names
        verify(signed_request(request, body), credentials, region, scope)
        if service is None:
            raise UnknownOperation(operation)
        handler = service.handlers.get(operation)
        if handler is None:
            raise UnknownOperation(
                f"openmaker does not implement {service.name} operation {operation}"
            )
        quick = service.quick.get(operation)
        if quick is not None and len(body) <= QUICK_BODY_BYTES:
            params = _params(service, operation, body)
            if (answer := quick(params)) is not None:
                content = service.rendered.body(answer, partial(_render, service, operation))
                return Response(
                    content,
                    media_type=service.content_type,
                    headers={"x-amzn-RequestId": request_id},
                )
            result = await run_in_threadpool(_answer, service, operation, handler, params)
        else:
            result = await run_in_threadpool(_call, service, operation, handler, body)
    except ServiceError as exc:
        return _error(exc, request_id)
    except Exception:
        log.error("request %s failed:\n%s", request_id, traceback.format_exc())
        return _error(ServiceError("An internal error occurred."), request_id)
    return JSONResponse(
        result,
        media_type=service.content_type,
        headers={"x-amzn-RequestId": request_id},
    )


def _call(service: Service, operation: str, handler: Handler, body: bytes) -> dict[str, Any]:
    return _answer(service, operation, handler, _params(service, operation, body))


def _params(service: Service, operation: str, body: bytes) -> dict[str, Any]:
    """The request's members, checked against the operation's input shape."""
    model = operation_model(operation, service.name)
    assert model.input_shape is not None  # every operation served takes a request
    params = from_wire(model.input_shape, parse_document(body))
    too_big = range_problems(model.input_shape, params)
    if too_big:
        raise ValidationException(error_message(too_big))
    service.validate(operation, params, service.name)
    return params


def _answer(
    service: Service, operation: str, handler: Handler, params: dict[str, Any]
) -> dict[str, Any]:
    """The handler's answer, in its wire form."""
    # A busy or full database is a ThrottlingException or ServiceUnavailable by now
    # (openmaker/jobs/db.py).
    return _wired(service, operation, handler(params))


def _wired(service: Service, operation: str, result: dict[str, Any]) -> dict[str, Any]:
    model = operation_model(operation, service.name)
    return to_wire(model.output_shape, result) if model.output_shape is not None else {}


def _render(service: Service, operation: str, result: dict[str, Any]) -> bytes:
    # As JSONResponse renders.
    return json.dumps(
        _wired(service, operation, result),
        ensure_ascii=False,
        allow_nan=False,
        separators=(",", ":"),
    ).encode("utf-8")


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise RequestTooLarge(
            f"The request body is {int(declared)} bytes; this API takes at most "
            f"{MAX_BODY_BYTES} bytes"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise RequestTooLarge(
                f"The request body is over {MAX_BODY_BYTES} bytes, the most this API takes"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _error(exc: ServiceError, request_id: str) -> Response:
    # ASCII with escapes: a message quoting what the client sent must not fail to encode.
    body = json.dumps(
        {"__type": exc.code, "message": exc.message}, ensure_ascii=True, separators=(",", ":")
    )
    headers = {"x-amzn-RequestId": request_id, "x-amzn-ErrorType": exc.code}
    # A query-compatible service's code as its clients know it (CloudWatch's
    # "InvalidParameterValue" for the shape InvalidParameterValueException).
    if query_code := getattr(exc, "query_code", None):
        fault = "Sender" if exc.http_status < 500 else "Receiver"
        headers["x-amzn-query-error"] = f"{query_code};{fault}"
    return Response(body, status_code=exc.http_status, media_type=JSON_TYPE, headers=headers)


def _query_error(
    service: query.QueryService | None, exc: ServiceError, request_id: str
) -> Response:
    return Response(
        query.error_body(service, exc, request_id),
        status_code=query.error_status(exc),
        media_type=query.CONTENT_TYPE,
        headers={"x-amzn-RequestId": request_id},
    )
