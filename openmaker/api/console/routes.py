"""The console's routes under `/console`: its pages, its assets, the login and logout, and a
JSON view per page. Each JSON view answers a logged-in session alone (401 otherwise), and each
request that changes something needs the session's CSRF token and a same-origin browser."""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from openmaker.api.console import artifacts, pages
from openmaker.api.console.auth import COOKIE, CSRF_HEADER, ConsoleAuth, Session, csrf_ok
from openmaker.api.console.cluster_view import ClusterView
from openmaker.api.console.endpoint_views import EndpointViews
from openmaker.api.console.kind_views import KindViews, processing_kind, transform_kind
from openmaker.api.console.views import ConsoleViews
from openmaker.api.credentials import Credentials
from openmaker.api.operations import Backend
from openmaker.api.signed import signed_request
from openmaker.api.sigv4 import verify
from openmaker.shapes.errors import ResourceNotFound, ServiceError, ValidationException

PREFIX = "/console"
# A login form is two short fields; anything bigger is refused unread.
MAX_FORM_BYTES = 4096
# An invocation from the page: a JSON object whose body is at most 1 MiB once decoded
# (endpoint_views.py), room left for JSON's escapes.
MAX_INVOKE_BYTES = 4 * 1024 * 1024
log = logging.getLogger("openmaker.api.console")

View = Callable[[Request, Session], Awaitable[Response]]


def console_routes(backend: Backend, credentials: Credentials, region: str) -> list[Route]:
    views = ConsoleViews(backend.jobs, backend.metrics)
    cluster = ClusterView(backend.jobs.settings)
    endpoints = EndpointViews(
        backend.serving, backend.invoker, backend.logs, backend.endpoint_metrics
    )
    kinds = {
        "processing": KindViews(processing_kind(backend.processing), backend.logs),
        "transform": KindViews(transform_kind(backend.transforms), backend.logs),
    }
    auth = ConsoleAuth(credentials)

    def session_of(request: Request) -> tuple[str, Session] | None:
        session_id = request.cookies.get(COOKIE)
        found = auth.session(session_id)
        return (session_id, found) if session_id and found else None

    def logged_in(request: Request, session_id: str) -> Response:
        # A fresh id on every login: a cookie planted before it is never the session.
        response = RedirectResponse(f"{PREFIX}/", status_code=303)
        secure = request.url.scheme == "https"  # behind a TLS proxy; plain HTTP on loopback
        response.set_cookie(
            COOKIE, session_id, path=PREFIX, httponly=True, samesite="strict", secure=secure
        )
        return pages.secured(response)

    async def root(request: Request) -> Response:
        if session_of(request) is None:
            return pages.secured(RedirectResponse(f"{PREFIX}/login", status_code=303))
        return pages.shell()

    async def login_form(request: Request) -> Response:
        token = request.query_params.get("token")
        if token is None:
            return pages.login_page()
        session_id = auth.redeem(token)
        if session_id is None:
            return pages.login_page(
                "This login link was used already or has expired: run 'openmaker console-url' "
                "again, or log in with the key pair.",
                401,
            )
        return logged_in(request, session_id)

    async def login(request: Request) -> Response:
        if not _same_origin(request):
            return pages.login_page("A login must come from this console's own page.", 403)
        body = await _small_body(request)
        fields = parse_qs(body.decode("utf-8", "replace")) if body is not None else {}
        session_id = auth.login(
            fields.get("access_key_id", [""])[0], fields.get("secret_access_key", [""])[0]
        )
        if session_id is None:
            return pages.login_page("That is not this server's key pair.", 401)
        return logged_in(request, session_id)

    async def mint(request: Request) -> Response:
        """A one-time login URL's path, for a request signed with the server's key pair."""
        try:
            body = await _small_body(request)
            if body is None:
                raise ServiceError("The request body is too large.")
            verify(signed_request(request, body), credentials, region, {"sagemaker"})
        except ServiceError as exc:
            return _error(exc.http_status, exc.code, exc.message)
        if not auth.first_use(request.headers.get("authorization", "")):
            return _error(
                403, "AccessDeniedException", "This signed request was used already: sign anew."
            )
        return _json({"path": f"{PREFIX}/login?token={auth.mint_token()}"})

    def guarded(view: View, changes: bool = False) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            found = session_of(request)
            if found is None:
                return _error(401, "Unauthenticated", "Log in to the console first.")
            if changes and not (
                _same_origin(request) and csrf_ok(found[1], request.headers.get(CSRF_HEADER))
            ):
                return _error(403, "Forbidden", "The request lacks this session's CSRF token.")
            try:
                return await view(request, found[1])
            except ServiceError as exc:
                return _error(exc.http_status, exc.code, exc.message)
            except Exception:
                log.error("console request failed:\n%s", traceback.format_exc())
                return _error(500, "InternalError", "An internal error occurred.")

        return endpoint

    def answering(read: Callable[[Request], Any]) -> View:
        async def view(request: Request, _session: Session) -> Response:
            return _json(await run_in_threadpool(read, request))

        return view

    async def session_view(_request: Request, session: Session) -> Response:
        return _json({"csrf": session.csrf})

    async def logout(request: Request, _session: Session) -> Response:
        auth.end(request.cookies.get(COOKIE, ""))
        response = _json({"loggedOut": True})
        response.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="strict")
        return response

    async def static(request: Request) -> Response:
        return pages.asset(request.path_params["name"])

    async def bare(_request: Request) -> Response:
        return pages.secured(RedirectResponse(f"{PREFIX}/", status_code=303))

    def name(request: Request) -> str:
        return str(request.path_params["name"])

    def table(request: Request) -> Any:
        return views.job_table(*_table_query(request))

    def after(request: Request) -> int:
        return _integer(request.query_params.get("after"), 0, "after")

    def kind_of(request: Request) -> KindViews:
        found = kinds.get(str(request.path_params["kind"]))
        if found is None:
            raise ResourceNotFound(f"no such kind of job: choose one of {sorted(kinds)}")
        return found

    async def invoke(request: Request, _session: Session) -> Response:
        body = await _small_body(request, MAX_INVOKE_BYTES)
        if body is None:
            raise ValidationException(f"The request is larger than {MAX_INVOKE_BYTES} bytes.")
        try:
            asked = json.loads(body)
        except ValueError:
            raise ValidationException("The request must be JSON.") from None
        return _json(await run_in_threadpool(endpoints.invoke, name(request), asked))

    async def artifact(request: Request, _session: Session) -> Response:
        response = await artifacts.download(
            backend.jobs, name(request), str(request.path_params["kind"])
        )
        return pages.secured(response)

    api = f"{PREFIX}/api"
    return [
        Route(PREFIX, bare, methods=["GET"]),
        Route(f"{PREFIX}/", root, methods=["GET"]),
        Route(f"{PREFIX}/login", login_form, methods=["GET"]),
        Route(f"{PREFIX}/login", login, methods=["POST"]),
        Route(f"{PREFIX}/token", mint, methods=["POST"]),
        Route(f"{PREFIX}/static/{{name}}", static, methods=["GET"]),
        Route(f"{api}/logout", guarded(logout, changes=True), methods=["POST"]),
        Route(f"{api}/session", guarded(session_view), methods=["GET"]),
        Route(f"{api}/jobs", guarded(answering(table)), methods=["GET"]),
        Route(
            f"{api}/jobs/{{name}}",
            guarded(answering(lambda r: views.job(name(r)))),
            methods=["GET"],
        ),
        Route(
            f"{api}/jobs/{{name}}/logs",
            guarded(answering(lambda r: views.logs(name(r), after(r)))),
            methods=["GET"],
        ),
        Route(
            f"{api}/jobs/{{name}}/metrics",
            guarded(answering(lambda r: views.metrics_of(name(r)))),
            methods=["GET"],
        ),
        Route(
            f"{api}/jobs/{{name}}/stop",
            guarded(answering(lambda r: views.stop(name(r))), changes=True),
            methods=["POST"],
        ),
        Route(f"{api}/jobs/{{name}}/artifacts/{{kind}}", guarded(artifact), methods=["GET"]),
        Route(f"{api}/machine", guarded(answering(lambda _r: views.machine())), methods=["GET"]),
        Route(f"{api}/cluster", guarded(answering(lambda _r: cluster.read())), methods=["GET"]),
        Route(
            f"{api}/endpoints",
            guarded(answering(lambda r: endpoints.table(*_table_query(r)))),
            methods=["GET"],
        ),
        Route(
            f"{api}/endpoints/{{name}}",
            guarded(answering(lambda r: endpoints.endpoint(name(r)))),
            methods=["GET"],
        ),
        Route(
            f"{api}/endpoints/{{name}}/logs",
            guarded(answering(lambda r: endpoints.logs_of(name(r), after(r)))),
            methods=["GET"],
        ),
        Route(f"{api}/endpoints/{{name}}/invoke", guarded(invoke, changes=True), methods=["POST"]),
        Route(
            f"{api}/kinds/{{kind}}",
            guarded(answering(lambda r: kind_of(r).table(*_table_query(r)))),
            methods=["GET"],
        ),
        Route(
            f"{api}/kinds/{{kind}}/{{name}}",
            guarded(answering(lambda r: kind_of(r).job(name(r)))),
            methods=["GET"],
        ),
        Route(
            f"{api}/kinds/{{kind}}/{{name}}/logs",
            guarded(answering(lambda r: kind_of(r).logs_of(name(r), after(r)))),
            methods=["GET"],
        ),
        Route(
            f"{api}/kinds/{{kind}}/{{name}}/stop",
            guarded(answering(lambda r: kind_of(r).stop(name(r))), changes=True),
            methods=["POST"],
        ),
    ]


def _table_query(request: Request) -> tuple[str | None, str | None, str, bool, int, str | None]:
    """A table's filters, sort, page size and page token, from the query string."""
    q = request.query_params
    return (
        q.get("name"),
        q.get("status"),
        q.get("sort", "CreationTime"),
        q.get("order", "desc") != "asc",
        _integer(q.get("limit"), 25, "limit"),
        q.get("token"),
    )


def _same_origin(request: Request) -> bool:
    """False for a request a browser says comes from another site (Sec-Fetch-Site, else
    Origin); requests from outside a browser (which sends neither) pass, having no victim's
    cookie to ride on."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    return origin is None or origin == f"{request.url.scheme}://{request.headers.get('host')}"


async def _small_body(request: Request, limit: int = MAX_FORM_BYTES) -> bytes | None:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _integer(value: str | None, default: int, member: str) -> int:
    if value is None or value == "":
        return default
    if not value.isdigit() or len(value) > 18:
        raise ValidationException(f"{member} must be a whole number, not {value[:40]!r}")
    return int(value)


def _json(data: Any, status_code: int = 200) -> Response:
    return pages.secured(JSONResponse(data, status_code=status_code))


def _error(status_code: int, code: str, message: str) -> Response:
    return _json({"error": code, "message": message}, status_code)
