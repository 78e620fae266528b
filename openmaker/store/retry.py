"""Retrying what obstore cannot retry itself: a response body that breaks off part way.

obstore retries a request until its answer starts (RetryConfig in store/location.py); a stream
that fails after that, and the ranged GETs of store/ranged.py, are retried here, from the byte
they had reached, with the same backoff and the same time limit.
"""

from __future__ import annotations

import asyncio
import http.client
import random
import time

from obstore.exceptions import (
    BaseError,
    InvalidPathError,
    NotFoundError,
    NotSupportedError,
    PermissionDeniedError,
    UnauthenticatedError,
)

_FIRST_WAIT = 0.1
_LONGEST_WAIT = 15.0


class RefusedAnswer(OSError):
    """An answer another attempt would not change: a 4xx status, or a body other than the one
    asked for (a server that ignores Range)."""


# Errors that another attempt cannot mend.
_PERMANENT = (
    RefusedAnswer,
    FileNotFoundError,
    PermissionError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
    InvalidPathError,
    NotSupportedError,
)


def is_transient(exc: BaseException) -> bool:
    """A dropped connection, a timeout or a broken-off body: worth another attempt."""
    if isinstance(exc, _PERMANENT):
        return False
    return isinstance(exc, (OSError, BaseError, http.client.HTTPException, EOFError))


class Backoff:
    """Exponential backoff with full jitter, until `seconds` have passed (the store's retry
    time: see `openmaker.store.location.retry_seconds`)."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.wait = _FIRST_WAIT

    def next_wait(self, exc: BaseException) -> float | None:
        """Seconds to wait before the next attempt, or None when `exc` must be raised."""
        if not is_transient(exc) or time.monotonic() >= self.deadline:
            return None
        wait = random.uniform(0, self.wait)
        self.wait = min(self.wait * 2, _LONGEST_WAIT)
        return min(wait, max(0.0, self.deadline - time.monotonic()))

    async def pause(self, exc: BaseException) -> None:
        """Sleep before the next attempt, or raise `exc` when no attempt is left."""
        wait = self.next_wait(exc)
        if wait is None:
            raise exc
        await asyncio.sleep(wait)

    def pause_blocking(self, exc: BaseException) -> None:
        wait = self.next_wait(exc)
        if wait is None:
            raise exc
        time.sleep(wait)
