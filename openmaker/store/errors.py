"""One error type at the store's boundary, with a message short enough for a FailureReason."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

from obstore.exceptions import BaseError


class StoreError(Exception):
    """An object store could not be reached or read, or a URI does not name one."""


P = ParamSpec("P")
T = TypeVar("T")

# obstore's account of a request that failed: the method, the whole URL (with an upload's id
# and the like), the time spent, the retries, then the cause.
_REQUEST_FAILED = re.compile(
    r"Error performing (?P<method>[A-Z]+) (?P<url>\S+) in (?P<elapsed>[\d.]+)(?P<unit>[a-zµ]+)"
    r"(?:, after (?P<retries>\d+) retries)?[^-]*- (?P<cause>.*)"
)
_STATUS = re.compile(r"Server returned non-2xx status code: (?P<status>\d{3}[^:]*)")
_S3_CODE = re.compile(r"<Code>(?P<code>[A-Za-z]+)</Code>")
_SECONDS_PER_UNIT = {"s": 1.0, "ms": 1e-3, "µs": 1e-6, "us": 1e-6, "ns": 1e-9}
_REQUEST_KINDS = {"GET": "a read", "HEAD": "a read", "PUT": "an upload", "POST": "an upload"}


def short_message(exc: BaseException) -> str:
    """A line for people: obstore's messages carry a debug dump after the first line and, in
    it, a request's full URL; what is kept is the server, what it answered, or why there was
    no answer."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    first = text.splitlines()[0]
    request = _REQUEST_FAILED.search(first)
    if request is None:
        return first
    parts = urlsplit(request["url"])
    server = f"the object store at {parts.scheme}://{parts.netloc}"
    if status := _STATUS.match(request["cause"]):
        code = _S3_CODE.search(text)
        answer = f"HTTP {status['status'].strip()}" + (f" ({code['code']})" if code else "")
        kind = _REQUEST_KINDS.get(request["method"], f"a {request['method']}")
        if request["method"] == "DELETE" and "uploadId=" in parts.query:
            kind = "the abort of an upload"
        return f"{server} answered {answer} to {kind}"
    seconds = float(request["elapsed"]) * _SECONDS_PER_UNIT.get(request["unit"], 1.0)
    cause = request["cause"].removeprefix("HTTP error: ").strip()
    tries = f"; retried for {seconds:.0f} s" if request["retries"] else ""
    return f"{server} could not be reached ({cause}{tries})"


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
