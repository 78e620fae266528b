"""Checking AWS Signature Version 4 on incoming requests, as AWS's JSON services do.

The canonical request is built the way botocore builds it when it signs (the path quoted once
more, the query string's pairs sorted as sent), so that every official client's signature can
be recomputed here from the raw request. The payload's hash in it is always computed from the
body received: a client's `x-amz-content-sha256` header is only a claim, refused unless it
equals that hash (so `UNSIGNED-PAYLOAD` is refused too, as the JSON services refuse it).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import time
from collections.abc import Collection, Mapping
from datetime import UTC, datetime, timedelta
from typing import NamedTuple
from urllib.parse import quote

from openmaker.api.credentials import Credentials
from openmaker.shapes.errors import ServiceError

ALGORITHM = "AWS4-HMAC-SHA256"
TERMINATOR = "aws4_request"
# AWS refuses a signature made more than 15 minutes away from its own clock, either way.
MAX_CLOCK_SKEW = timedelta(minutes=15)
_STAMP = "%Y%m%dT%H%M%SZ"
_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. Consult the service "
    "documentation for details."
)


class MissingAuthenticationToken(ServiceError):
    code = "MissingAuthenticationTokenException"
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


# Named tuples rather than frozen dataclasses: made on every request, and a frozen
# dataclass's constructor costs several times a tuple's.
class SignedRequest(NamedTuple):
    method: str
    raw_path: str  # as sent, still percent-encoded
    raw_query: str
    headers: Mapping[str, list[str]]  # lower-case names
    body: bytes


class Scope(NamedTuple):
    """The credential scope, `date/region/service/aws4_request`."""

    date: str
    region: str
    service: str
    terminator: str

    def __str__(self) -> str:
        return "/".join(self)


class _Authorization(NamedTuple):
    access_key_id: str
    scope: Scope
    signed_headers: list[str]
    signature: str


def verify(
    request: SignedRequest,
    credentials: Credentials,
    region: str,
    services: Collection[str],
) -> Scope:
    """Raise the AWS error a client would get unless `request` is signed by `credentials`, for
    `region` and one of `services` (signing names), close enough to now; else the signature's
    scope (its `service` says which service the client meant)."""
    header = _first(request.headers, "authorization")
    if header is None:
        raise MissingAuthenticationToken("Missing Authentication Token")
    auth = _parse_authorization(header)
    amz_date = _first(request.headers, "x-amz-date")
    if amz_date is None:
        raise IncompleteSignature(
            "Authorization header requires existence of a 'X-Amz-Date' header."
        )
    when = _instant(amz_date)
    if when is None:
        raise IncompleteSignature(
            f"Date must be in ISO-8601 'basic format'. Got '{amz_date[:40]}'. "
            "See http://en.wikipedia.org/wiki/ISO_8601"
        )
    if not hmac.compare_digest(auth.access_key_id.encode(), credentials.access_key_id.encode()):
        raise UnrecognizedClient("The security token included in the request is invalid.")
    _check_scope(auth.scope, amz_date, region, services)
    _check_clock(amz_date, when, time.time())
    if "host" not in auth.signed_headers:
        raise IncompleteSignature("'Host' must be a 'SignedHeader' in the AWS Authorization.")
    canonical = canonical_request(request, auth.signed_headers, payload_hash(request))
    # The bytes as sent: every part was read from them one to one (latin-1), and a client
    # signs what it sends (botocore sends a header's non-ASCII text as UTF-8).
    digest = hashlib.sha256(canonical.encode("latin-1")).hexdigest()
    string_to_sign = f"{ALGORITHM}\n{amz_date}\n{'/'.join(auth.scope)}\n{digest}"
    expected = hmac.digest(
        _signing_key(credentials.secret_access_key, auth.scope),
        string_to_sign.encode(),
        "sha256",
    ).hex()
    if not hmac.compare_digest(expected.encode(), auth.signature.encode()):
        raise InvalidSignature(_MISMATCH)
    return auth.scope


def payload_hash(request: SignedRequest) -> str:
    """The SHA-256 of the body received. A client's `x-amz-content-sha256` must be that very
    hash: a request signed over one body and sent with another is refused here whatever the
    header says (and the canonical request never takes the header's word for it)."""
    computed = hashlib.sha256(request.body).hexdigest()
    for claimed in request.headers.get("x-amz-content-sha256", []):
        if claimed == "UNSIGNED-PAYLOAD":
            raise InvalidSignature(
                f"{_MISMATCH} This service does not accept 'UNSIGNED-PAYLOAD': "
                "the body must be signed."
            )
        if not hmac.compare_digest(claimed.strip().lower().encode(), computed.encode()):
            raise InvalidSignature(
                f"{_MISMATCH} The provided 'x-amz-content-sha256' header does not match "
                "what was computed."
            )
    return computed


def canonical_request(request: SignedRequest, signed_headers: list[str], payload: str) -> str:
    lines = []
    given = request.headers
    for name in signed_headers:
        values = given.get(name)
        if values is None:
            raise IncompleteSignature(
                f"'{name}' is named as a SignedHeader, but it does not exist in the HTTP request."
            )
        # Each value trimmed, its runs of spaces made one (nearly always a single value).
        if len(values) == 1:
            lines.append(f"{name}:{' '.join(values[0].split())}\n")
        else:
            lines.append(f"{name}:{','.join(' '.join(v.split()) for v in values)}\n")
    query = ""
    if request.raw_query:
        pairs = sorted(tuple(p.partition("=")[::2]) for p in request.raw_query.split("&") if p)
        query = "&".join(f"{key}={value}" for key, value in pairs)
    return (
        f"{request.method.upper()}\n{_quoted_path(request.raw_path or '/')}\n{query}\n"
        f"{''.join(lines)}\n{';'.join(signed_headers)}\n{payload}"
    )


# A client sends its invocations of an endpoint to one path again and again.
@functools.lru_cache(maxsize=256)
def _quoted_path(raw_path: str) -> str:
    return quote(raw_path, safe="/~")


def _check_scope(scope: Scope, amz_date: str, region: str, services: Collection[str]) -> None:
    if scope.terminator != TERMINATOR:
        raise InvalidSignature(
            f"Credential should be scoped with a valid terminator: '{TERMINATOR}', "
            f"not '{scope.terminator}'."
        )
    if scope.date != amz_date[:8]:
        raise InvalidSignature(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
            f"from HTTP: '{scope.date}' != '{amz_date[:8]}', from '{amz_date}'."
        )
    if scope.region != region:
        raise InvalidSignature(
            f"Credential should be scoped to a valid region, not '{scope.region}'."
        )
    if scope.service not in services:
        wanted = " or ".join(f"'{s}'" for s in sorted(services))
        raise InvalidSignature(f"Credential should be scoped to correct service: {wanted}.")


def _check_clock(amz_date: str, when: float, now_seconds: float) -> None:
    """`when` and `now_seconds`: seconds since the epoch (the stamps in the messages are
    spelled out only for a refusal)."""
    skew = MAX_CLOCK_SKEW.total_seconds()
    if when >= now_seconds - skew and when <= now_seconds + skew:
        return
    now = datetime.fromtimestamp(now_seconds, UTC)
    if when < now_seconds - skew:
        raise InvalidSignature(
            f"Signature expired: {amz_date} is now earlier than "
            f"{now - MAX_CLOCK_SKEW:{_STAMP}} ({now:{_STAMP}} - 15 min.)"
        )
    raise InvalidSignature(
        f"Signature not yet current: {amz_date} is still later than "
        f"{now + MAX_CLOCK_SKEW:{_STAMP}} ({now:{_STAMP}} + 15 min.)"
    )


def _instant(amz_date: str) -> float | None:
    """`YYYYMMDDTHHMMSSZ` as seconds since the epoch, None unless it is one (every field its
    full width, the date a real one). Sliced by hand: strptime costs more than the rest of
    the header parsing together."""
    digits = amz_date[:8] + amz_date[9:15]
    if (
        len(amz_date) != 16
        or amz_date[8] != "T"
        or amz_date[15] != "Z"
        or not (digits.isascii() and digits.isdigit())
    ):
        return None
    day = _day_start(amz_date[:8])
    hour, minute, second = int(digits[8:10]), int(digits[10:12]), int(digits[12:14])
    if day is None or hour > 23 or minute > 59 or second > 61:
        return None
    return day + hour * 3600 + minute * 60 + min(second, 59)


@functools.lru_cache(maxsize=16)
def _day_start(date: str) -> float | None:
    """Midnight (UTC) of `YYYYMMDD` in seconds since the epoch; None: no such day."""
    try:
        return datetime(int(date[:4]), int(date[4:6]), int(date[6:8]), tzinfo=UTC).timestamp()
    except ValueError:
        return None


def _parse_authorization(header: str) -> _Authorization:
    algorithm, _, rest = header.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise IncompleteSignature(
            f"Unsupported Authorization Type '{algorithm[:40]}': use {ALGORITHM}."
        )
    parts: dict[str, str] = {}
    for item in rest.split(","):
        if not item.strip():
            continue
        name, equal, value = item.strip().partition("=")
        if not equal:
            raise IncompleteSignature(
                f"'{item.strip()[:200]}' not a valid key=value pair (missing equal-sign) in "
                "Authorization header."
            )
        parts[name] = value
    missing = [n for n in ("Credential", "Signature", "SignedHeaders") if not parts.get(n)]
    if missing:
        raise IncompleteSignature(
            " ".join(f"Authorization header requires '{name}' parameter." for name in missing)
        )
    key, _, scope = parts["Credential"].partition("/")
    fields = scope.split("/")
    if not key or len(fields) != 4:
        raise IncompleteSignature(
            f"Credential must have exactly 5 slash-delimited elements, e.g. "
            f"keyid/date/region/service/{TERMINATOR}, got '{parts['Credential'][:200]}'."
        )
    return _Authorization(
        key, Scope(*fields), parts["SignedHeaders"].lower().split(";"), parts["Signature"]
    )


# A client signs every request of a day with the same key: derived once (four HMACs a request
# otherwise).
@functools.lru_cache(maxsize=64)
def _signing_key(secret: str, scope: Scope) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (scope.date, scope.region, scope.service, scope.terminator):
        key = hmac.digest(key, part.encode(), "sha256")
    return key


def _first(headers: Mapping[str, list[str]], name: str) -> str | None:
    values = headers.get(name)
    return values[0] if values else None
