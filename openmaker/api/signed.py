"""A Starlette request as SigV4 checks it: the raw path and query, every header's values, the
body as read."""

from __future__ import annotations

from starlette.requests import Request

from openmaker.api.sigv4 import SignedRequest


def signed_request(request: Request, body: bytes) -> SignedRequest:
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
