"""Checking AWS Signature Version 4 on incoming requests, as AWS services do.

The canonical request is built the way botocore builds it when it signs (the path quoted once
more, the query string's pairs sorted as sent), so that every official client's signature can
be recomputed here from the raw request.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from openmaker.api.credentials import Credentials
from openmaker.spec.errors import ServiceError

ALGORITHM = "AWS4-HMAC-SHA256"
# AWS refuses a signature made more than 15 minutes away from its own clock.
MAX_CLOCK_SKEW = timedelta(minutes=15)


class MissingAuthenticationToken(ServiceError):
    code = "MissingAuthenticationToken"
    http_status = 403


class IncompleteSignature(ServiceError):
    code = "IncompleteSignatureException"
    http_status = 400


class UnrecognizedClient(ServiceError):
    code = "UnrecognizedClientException"
    http_status = 400


class InvalidSignature(ServiceError):
    code = "InvalidSignatureException"
    http_status = 400


@dataclass(frozen=True)
class SignedRequest:
    method: str
    raw_path: str  # as sent, still percent-encoded
    raw_query: str
    headers: Mapping[str, list[str]]  # lower-case names
    body: bytes


@dataclass(frozen=True)
class _Authorization:
    access_key_id: str
    scope: str  # date/region/service/aws4_request
    signed_headers: list[str]
    signature: str


def verify(request: SignedRequest, credentials: Credentials, service: str | None) -> None:
    """Raise the AWS error a client would get unless `request` is signed by `credentials`
    (for `service`, when given)."""
    header = _first(request.headers, "authorization")
    if header is None:
        raise MissingAuthenticationToken("Missing Authentication Token")
    auth = _parse_authorization(header)
    if not hmac.compare_digest(auth.access_key_id, credentials.access_key_id):
        raise UnrecognizedClient("The security token included in the request is invalid.")
    date, _region, scope_service, terminator = auth.scope.split("/")
    if (service and scope_service != service) or terminator != "aws4_request":
        raise InvalidSignature(
            f"Credential should be scoped to correct service: '{service}'."
        )
    amz_date = _first(request.headers, "x-amz-date")
    if amz_date is None:
        raise IncompleteSignature("Authorization header requires existence of a 'X-Amz-Date'.")
    try:
        when = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise IncompleteSignature(f"Invalid X-Amz-Date {amz_date!r}") from None
    if not amz_date.startswith(date):
        raise InvalidSignature("Date in Credential scope does not match YYYYMMDD from X-Amz-Date")
    now = datetime.now(UTC)
    if abs(now - when) > MAX_CLOCK_SKEW:
        raise InvalidSignature(
            f"Signature expired: {amz_date} is now earlier than "
            f"{(now - MAX_CLOCK_SKEW):%Y%m%dT%H%M%SZ} ({now:%Y%m%dT%H%M%SZ} - 15 min.)"
        )
    if "host" not in auth.signed_headers:
        raise InvalidSignature("'Host' must be a signed header")
    canonical = canonical_request(request, auth.signed_headers)
    string_to_sign = "\n".join(
        [ALGORITHM, amz_date, auth.scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    expected = hmac.new(
        _signing_key(credentials.secret_access_key, auth.scope),
        string_to_sign.encode(),
        hashlib.sha256,
    ).hexdigest()
    if not hmac.compare_digest(expected, auth.signature):
        raise InvalidSignature(
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method. Consult the service "
            "documentation for details."
        )


def canonical_request(request: SignedRequest, signed_headers: list[str]) -> str:
    headers = []
    for name in signed_headers:
        values = request.headers.get(name)
        if values is None:
            raise InvalidSignature(f"Signed header {name!r} is missing from the request")
        headers.append(f"{name}:{','.join(' '.join(v.split()) for v in values)}")
    pairs = sorted(tuple(p.partition("=")[::2]) for p in request.raw_query.split("&") if p)
    payload = _first(request.headers, "x-amz-content-sha256") or hashlib.sha256(
        request.body
    ).hexdigest()
    return "\n".join(
        [
            request.method.upper(),
            quote(request.raw_path or "/", safe="/~"),
            "&".join(f"{key}={value}" for key, value in pairs),
            "\n".join(headers) + "\n",
            ";".join(signed_headers),
            payload,
        ]
    )


def _parse_authorization(header: str) -> _Authorization:
    algorithm, _, rest = header.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise IncompleteSignature(f"Unsupported authorization type {algorithm!r}; use {ALGORITHM}")
    parts: dict[str, str] = {}
    for item in rest.split(","):
        name, _, value = item.strip().partition("=")
        parts[name] = value
    missing = [n for n in ("Credential", "SignedHeaders", "Signature") if not parts.get(n)]
    if missing:
        raise IncompleteSignature(
            f"Authorization header requires {', '.join(repr(m) for m in missing)} parameter(s)"
        )
    key, _, scope = parts["Credential"].partition("/")
    if scope.count("/") != 3:
        raise IncompleteSignature(f"Malformed credential scope {parts['Credential']!r}")
    return _Authorization(key, scope, parts["SignedHeaders"].lower().split(";"), parts["Signature"])


def _signing_key(secret: str, scope: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in scope.split("/"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def _first(headers: Mapping[str, list[str]], name: str) -> str | None:
    values = headers.get(name)
    return values[0] if values else None
