"""Where every command writes: its result to stdout, its errors to stderr, in one look.

Soft wrap, because a log line piped to a file must stay one line.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

console = Console(highlight=False, soft_wrap=True)
errors = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `message` as the command's error; the caller raises what it returns."""
    errors.print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(code)


def when(value: Any) -> str:
    """A time in the machine's zone, to the second; empty for what is not a time."""
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if isinstance(value, datetime) else ""


def json_default(value: object) -> str:
    """`json.dumps`' fallback for what the services answer: times as ISO 8601."""
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)
