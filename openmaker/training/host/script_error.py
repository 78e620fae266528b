"""The script's own error in a framework job's FailureReason, as SageMaker's containers give it.

SageMaker's framework containers run the entry point through the `sagemaker-training` toolkit
with its error capture on: the failure file then reads `ExecuteUserScriptError:\\nExitCode 1\\n
ErrorMessage "ModuleNotFoundError: No module named 'torch'"\\nCommand "..."`, the message
being the script's output from the first line that names a Python error on. The toolkit's own
`train` command leaves the message empty (`ErrorMessage ""`); openmaker watches the host's
output the same way and fills it in.
"""

from __future__ import annotations

import builtins
import re

from openmaker.training.host.events import Emit, Event, LogLine, LogLines

# The toolkit starts its capture at a line naming one of Python's own exception classes.
_ERROR_NAME = re.compile(
    "|".join(
        re.escape(name)
        for name, value in vars(builtins).items()
        if isinstance(value, type) and issubclass(value, BaseException)
    )
)
# The toolkit's own logger: it logs nothing while the script runs, and its first ERROR line
# after the script's error is its report of the failure.
TOOLKIT_LOGGER = "sagemaker-training-toolkit"
_EMPTY_MESSAGE = re.compile(r'(\w+Error:\nExitCode -?\d+\n)ErrorMessage ""\n')
# Enough for any FailureReason (1024 characters at most).
_KEEP_CHARS = 2048


class ErrorCapture:
    """Forwards a host's events; keeps the lines the toolkit would have put in ErrorMessage."""

    def __init__(self, emit: Emit) -> None:
        self._emit = emit
        self._lines: list[str] = []
        self._size = 0
        self._done = False

    def __call__(self, event: Event) -> None:
        self._emit(event)
        if isinstance(event, LogLine):
            self._read([event.message])
        elif isinstance(event, LogLines):
            self._read(event.messages)

    @property
    def message(self) -> str:
        return "\n".join(self._lines).strip()

    def fill(self, failure: str, limit: int) -> str:
        """`failure` (a FailureReason) with its empty ErrorMessage filled in, as far as it
        stays within `limit` characters."""
        message = self.message[: max(limit - len(failure), 0)]
        if not message:
            return failure
        return _EMPTY_MESSAGE.sub(
            lambda found: f'{found[1]}ErrorMessage "{message}"\n', failure, count=1
        )

    def _read(self, messages: list[str]) -> None:
        for line in messages:
            if self._done:
                return
            if TOOLKIT_LOGGER in line:
                if self._lines and "ERROR" in line:
                    self._done = True
                else:  # what was kept is the toolkit's own output, from before the script
                    self._lines, self._size = [], 0
                continue
            if not self._lines and not _ERROR_NAME.search(line):
                continue
            text = line.strip(" :\n")
            if text and text not in self._lines:  # the toolkit keeps each line once
                self._lines.append(text)
                self._size += len(text) + 1
            self._done = self._size >= _KEEP_CHARS
