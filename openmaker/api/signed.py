"""A request as SigV4 checks it (a Starlette one, or its parts as an ASGI server gives them):
the raw path and query, every header's values, the body as read."""

from __future__ import annotations

from starlette.requests import Request

from openmaker.api.sigv4 import SignedRequest


def signed_request(request: Request, body: bytes) -> SignedRequest:
    scope = request.scope
    return signed_parts(
        request.method,
        scope.get("raw_path", b"/"),
        scope.get("query_string", b""),
        scope["headers"],
        body,
    )


def signed_parts(
    method: str, raw_path: bytes, query: bytes, headers: list[tuple[bytes, bytes]], body: bytes
) -> SignedRequest:
    """A request as SigV4 checks it, from its parts as an ASGI server gives them (header names
    lower-case, as ASGI has them)."""
    named: dict[str, list[str]] = {}
    for name, value in headers:
        key = name.decode("latin-1")
        if key in named:
            named[key].append(value.decode("latin-1"))
        else:
            named[key] = [value.decode("latin-1")]
    return SignedRequest(
        method=method,
        raw_path=raw_path.decode("latin-1").split("?", 1)[0],
        raw_query=query.decode("latin-1"),
        headers=named,
        body=body,
    )
