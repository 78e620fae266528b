"""The last lines an instance's containers wrote, kept (bounded) so that a container ending
before it answered /ping can be explained in the FailureReason by what it said last (a
traceback's last line, a model server's own reason), not only by its exit status."""

from __future__ import annotations

import threading
from collections import deque

from openmaker.runtime.logs import OnLines

LINES = 20
# At most this much of the last line goes into a FailureReason (the log has the rest).
SHOWN_CHARS = 400


class OutputTail:
    def __init__(self) -> None:
        self._lines: deque[str] = deque(maxlen=LINES)
        self._lock = threading.Lock()

    def wrap(self, on_lines: OnLines) -> OnLines:
        """`on_lines`, with the lines kept here as well."""

        def kept(when: int, lines: list[str], size: int) -> None:
            with self._lock:
                self._lines.extend(line for line in lines[-LINES:] if line.strip())
            on_lines(when, lines, size)

        return kept

    def last(self) -> str:
        """The last line written that is not blank ("" when none), cut to SHOWN_CHARS."""
        with self._lock:
            line = self._lines[-1].strip() if self._lines else ""
        return line if len(line) <= SHOWN_CHARS else line[: SHOWN_CHARS - 1] + "…"
