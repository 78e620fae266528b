"""Paging as the model declares it, and one token format for every operation that pages.

Which request member carries the token and which the page size, and which response member
carries the next token, come from botocore's `paginators-1.json` for the operation. A token is
opaque to clients: URL-safe base64 of a JSON object naming the operation and where the next
page begins (plus what the query must keep, such as its sort order). A token not made this way,
or made for another operation or query, is refused with the service's own error.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from dataclasses import dataclass
from typing import Any

from botocore.loaders import Loader

from openmaker.shapes.errors import InvalidParameter, ServiceError, ValidationException


@dataclass(frozen=True)
class Paginator:
    operation: str
    service: str
    input_token: str  # the request member that carries a token
    output_token: str  # the response member that carries the next one
    limit_key: str | None  # the request member that sets the page size

    def limit(self, params: dict[str, Any], default: int) -> int:
        return int(params.get(self.limit_key, default)) if self.limit_key else default

    def token(self, params: dict[str, Any]) -> str | None:
        return params.get(self.input_token) or None

    def position(self, token: str | None, **query: Any) -> dict[str, Any] | None:
        """Where the page of `token` begins (None: at the start), for the query `query`."""
        if token is None:
            return None
        return decode(self.operation, token, self.invalid(token), **query)

    def next_page(
        self, result: dict[str, Any], position: dict[str, Any] | None, **query: Any
    ) -> dict[str, Any]:
        """`result`, with the token of the page beginning at `position` (None: no more)."""
        if position is not None:
            result[self.output_token] = encode(self.operation, {**position, **query})
        return result

    def invalid(self, token: str) -> ServiceError:
        return invalid_token(self.service, self.input_token, token)


@functools.cache
def paginator(operation: str, service: str = "sagemaker") -> Paginator:
    """The paginator the model declares for `operation` (KeyError when it declares none)."""
    config = _paginators(service)[operation]
    tokens = (config["input_token"], config["output_token"])
    if not all(isinstance(member, str) for member in tokens):
        raise ValueError(f"{service} {operation} pages with several tokens")
    return Paginator(operation, service, *tokens, config.get("limit_key"))


@functools.cache
def _paginators(service: str) -> dict[str, Any]:
    model: dict[str, Any] = Loader().load_service_model(service, "paginators-1")
    return dict(model["pagination"])


def encode(operation: str, position: dict[str, Any]) -> str:
    raw = json.dumps({"op": operation, **position}, sort_keys=True, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode(operation: str, token: str, invalid: ServiceError, **query: Any) -> dict[str, Any]:
    """The position a token of `operation` holds, made for the same `query`; else `invalid`."""
    try:
        data = json.loads(base64.b64decode(token.encode(), altchars=b"-_", validate=True))
    except (ValueError, UnicodeError, binascii.Error):
        raise invalid from None
    if not isinstance(data, dict) or data.pop("op", None) != operation:
        raise invalid
    for key, value in query.items():
        if data.pop(key, None) != value:
            raise invalid
    return data


def invalid_token(service: str, member: str, token: str) -> ServiceError:
    """How each service refuses a token it did not make."""
    if service == "logs":
        return InvalidParameter(f"The specified {member} is invalid: {token[:100]!r}")
    return ValidationException(
        f"{member}: the token is not one this service returned for this query"
    )


def whole_number(position: dict[str, Any], key: str, largest: int, invalid: ServiceError) -> int:
    """A position's `key`: a whole number from 0 to `largest` (a row id, an offset)."""
    value = position.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= largest:
        raise invalid
    return value
