"""One error type at the store's boundary, with a message short enough for a FailureReason."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from obstore.exceptions import BaseError


class StoreError(Exception):
    """An object store could not be reached or read, or a URI does not name one."""


P = ParamSpec("P")
T = TypeVar("T")


def short_message(exc: BaseException) -> str:
    """obstore's messages carry a debug dump after the first line; people need the first."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def translate_errors(
    function: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """Raise StoreError for whatever obstore or the local filesystem raises. The result is a
    coroutine function still, so that `asyncio.run` takes its calls."""

    @functools.wraps(function)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await function(*args, **kwargs)
        except (BaseError, OSError) as exc:
            raise StoreError(short_message(exc)) from exc

    return wrapper
