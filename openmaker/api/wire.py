"""Values between JSON on the wire and Python, driven by the botocore model's shapes.

The JSON protocols carry timestamps as epoch seconds (CloudWatch Logs' `long` millisecond
fields are plain numbers in the model) and blobs as base64; everything else is plain JSON.
Unknown members are kept on the way in, so that validation can name them.

A request body is read strictly first: a document nested deeper than any request, a string
that is not Unicode (a lone surrogate such as `"\\ud800"`), or a number that is not finite
is refused there, naming where it is, before anything else looks at it.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from botocore.model import ListShape, MapShape, Shape, StructureShape

from openmaker.shapes.errors import SerializationError
from openmaker.shapes.validate import failure

# The deepest request of either service nests 6 levels; this leaves room for later models.
MAX_DEPTH = 32
# What the model's integer kinds hold (Java's int and long, as AWS reads them).
_INTEGER_RANGES = {"integer": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}


def parse_document(body: bytes) -> dict[str, Any]:
    """The request's JSON object, or a SerializationException saying what is wrong and where."""
    try:
        document = json.loads(body or b"{}")
    except RecursionError:
        raise SerializationError(
            f"The request body nests deeper than {MAX_DEPTH} levels of objects and lists"
        ) from None
    except ValueError as exc:
        raise SerializationError(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise SerializationError("The request body must be a JSON object")
    _check_values(document)
    return document


# Where a value sits, as a chain (parent, step): built for every container, spelled out only
# for the one a problem is found in.
_Where = tuple[Any, ...]


def _check_values(document: dict[str, Any]) -> None:
    # Iterative, so that checking a deep document cannot itself run out of stack; only
    # containers are stacked, so that a long flat list costs one pass.
    pending: list[tuple[dict[str, Any] | list[Any], _Where, int]] = [(document, (), 1)]
    while pending:
        container, where, depth = pending.pop()
        is_object = isinstance(container, dict)
        # A step is a member name (str) in an object, a position (int) in a list.
        pairs: Iterable[tuple[Any, Any]] = (
            container.items() if isinstance(container, dict) else enumerate(container, 1)
        )
        for step, item in pairs:
            if is_object and not _is_unicode(step):
                raise SerializationError(
                    f"A member name at '{_spelled(where) or '(top level)'}' is not valid "
                    f"Unicode: {_escaped(step)} holds a lone surrogate"
                )
            kind = type(item)
            if kind is dict or kind is list:
                if depth == MAX_DEPTH:
                    raise SerializationError(
                        f"The request body nests deeper than {MAX_DEPTH} levels of objects and "
                        f"lists (at '{_spelled((where, step))[:100]}')"
                    )
                if item:  # an empty one holds nothing to check
                    pending.append((item, (where, step), depth + 1))
            elif kind is str and not _is_unicode(item):
                raise SerializationError(
                    f"The value at '{_spelled((where, step))}' is not valid Unicode: "
                    f"{_escaped(item)} holds a lone surrogate"
                )
            elif kind is float and not math.isfinite(item):
                raise SerializationError(
                    f"The value at '{_spelled((where, step))}' is not a finite number (NaN, "
                    "Infinity and numbers beyond about 1.8e308 are refused)"
                )


def _spelled(where: _Where) -> str:
    """`Tags.1.member.Value`, as validation names members."""
    steps: list[str] = []
    while where:
        where, step = where
        steps.append(f"{step}.member" if isinstance(step, int) else step)
    return ".".join(reversed(steps))


def _is_unicode(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _escaped(text: str) -> str:
    shown = text[:60].encode("ascii", "backslashreplace").decode("ascii")
    return f"'{shown}{'...' if len(text) > 60 else ''}'"


def range_problems(shape: Shape, value: Any, path: str = "") -> list[str]:
    """Numbers too big for their member's kind (a 32-bit `integer`, a 64-bit `long`, a
    `double`), worded as validation words its problems; the model's own bounds are
    validation's to check."""
    kind = shape.type_name
    prefix = f"{path}." if path else ""
    if isinstance(shape, StructureShape) and isinstance(value, dict):
        members = shape.members
        return [
            problem
            for name, item in value.items()
            if name in members
            for problem in range_problems(members[name], item, prefix + name)
        ]
    if isinstance(shape, ListShape) and isinstance(value, list):
        member = shape.member
        return [
            problem
            for index, item in enumerate(value, 1)
            for problem in range_problems(member, item, f"{path}.{index}.member")
        ]
    if isinstance(shape, MapShape) and isinstance(value, dict):
        return [
            problem
            for key, item in value.items()
            for problem in range_problems(shape.value, item, f"{path}.{key}")
        ]
    if not isinstance(value, int) or isinstance(value, bool):
        return []
    if kind in _INTEGER_RANGES:
        low, high = _INTEGER_RANGES[kind]
        if value < low:
            return [failure(value, path, f"Member must have value greater than or equal to {low}")]
        if value > high:
            return [failure(value, path, f"Member must have value less than or equal to {high}")]
    if kind in ("double", "float"):
        try:
            float(value)
        except OverflowError:
            return [failure(value, path, "Member must be a number a double can hold")]
    return []


def to_wire(shape: Shape, value: Any) -> Any:
    kind = shape.type_name
    if isinstance(shape, StructureShape):
        members = shape.members
        return {
            name: to_wire(members[name], item)
            for name, item in value.items()
            if name in members and item is not None
        }
    if isinstance(shape, ListShape):
        return [to_wire(shape.member, item) for item in value]
    if isinstance(shape, MapShape):
        return {key: to_wire(shape.value, item) for key, item in value.items()}
    if kind == "timestamp" and isinstance(value, datetime):
        stamp = value if value.tzinfo else value.replace(tzinfo=UTC)
        return round(stamp.timestamp(), 3)
    if kind == "blob" and isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


def from_wire(shape: Shape, value: Any) -> Any:
    """Timestamps become datetimes and blobs bytes where they are well formed; anything else
    is left as sent, for validation to report."""
    kind = shape.type_name
    if isinstance(shape, StructureShape) and isinstance(value, dict):
        members = shape.members
        return {
            name: from_wire(members[name], item) if name in members else item
            for name, item in value.items()
        }
    if isinstance(shape, ListShape) and isinstance(value, list):
        return [from_wire(shape.member, item) for item in value]
    if isinstance(shape, MapShape) and isinstance(value, dict):
        return {key: from_wire(shape.value, item) for key, item in value.items()}
    if kind == "timestamp":
        return _timestamp(value)
    if kind == "blob" and isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return value
    return value


def _timestamp(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            return str(value)  # out of range: validation then refuses it as a timestamp
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return value
