"""Answer bodies rendered once for answers handed back again as the very same object (an ended
job's kept description): the JSON is kept beside the object, which is held so that its id
cannot be reused while it is kept."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

KEPT = 1024


class RenderedAnswers:
    """Used from the event loop's thread only (no lock)."""

    def __init__(self, kept: int = KEPT) -> None:
        self._kept = kept
        self._bodies: OrderedDict[int, tuple[dict[str, Any], bytes]] = OrderedDict()

    def body(self, answer: dict[str, Any], render: Callable[[dict[str, Any]], bytes]) -> bytes:
        """`render(answer)`, or what it gave before for this same object."""
        key = id(answer)
        entry = self._bodies.get(key)
        if entry is not None and entry[0] is answer:
            self._bodies.move_to_end(key)
            return entry[1]
        rendered = render(answer)
        self._bodies[key] = (answer, rendered)
        while len(self._bodies) > self._kept:
            self._bodies.popitem(last=False)
        return rendered
