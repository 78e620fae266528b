"""Values as the console's JSON carries them: times as epoch milliseconds."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def ms(value: Any) -> int | None:
    if isinstance(value, datetime):
        return int(value.astimezone(UTC).timestamp() * 1000)
    return None


def plain(value: Any) -> Any:
    """`value` with every datetime as epoch ms: what JSON can carry."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, datetime):
        return ms(value)
    return value
