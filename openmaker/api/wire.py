"""Values between JSON on the wire and Python, driven by the botocore model's shapes.

The JSON protocols carry timestamps as epoch seconds (CloudWatch Logs' `long` millisecond
fields are plain numbers in the model) and blobs as base64; everything else is plain JSON.
Unknown members are kept on the way in, so that validation can name them.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Any

from botocore.model import Shape


def to_wire(shape: Shape, value: Any) -> Any:
    kind = shape.type_name
    if kind == "structure":
        members = shape.members  # type: ignore[attr-defined]
        return {
            name: to_wire(members[name], item)
            for name, item in value.items()
            if name in members and item is not None
        }
    if kind == "list":
        return [to_wire(shape.member, item) for item in value]  # type: ignore[attr-defined]
    if kind == "map":
        return {key: to_wire(shape.value, item) for key, item in value.items()}  # type: ignore[attr-defined]
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
    if kind == "structure" and isinstance(value, dict):
        members = shape.members  # type: ignore[attr-defined]
        return {
            name: from_wire(members[name], item) if name in members else item
            for name, item in value.items()
        }
    if kind == "list" and isinstance(value, list):
        return [from_wire(shape.member, item) for item in value]  # type: ignore[attr-defined]
    if kind == "map" and isinstance(value, dict):
        return {key: from_wire(shape.value, item) for key, item in value.items()}  # type: ignore[attr-defined]
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
