"""Running a host's code: logs line by line, the stopping condition, the exit status."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from openmaker.training.host.container import Launch
from openmaker.training.host.events import Emit, LogLines
from openmaker.training.host.volume import observe as observe_volume

# SageMaker gives a stopped container 120 s between SIGTERM and SIGKILL.
DEFAULT_GRACE_SECONDS = 120.0
FAILURE_REASON_LIMIT = 1024


class StopControl:
    """Set from outside (StopTrainingJob) or by the time limit; read by the running host."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None

    def request(self, reason: str = "Stopped") -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)


@dataclass(frozen=True)
class Exit:
    code: int
    # "Stopped" or "MaxRuntimeExceeded" when the code was stopped, else None.
    stopped: str | None


def run_process(
    launch: Launch,
    host: str,
    emit: Emit,
    stop: StopControl,
    max_runtime: float | None,
    grace: float = DEFAULT_GRACE_SECONDS,
) -> Exit:
    """Start the host's container, its output forwarded as log events (`emit` blocks while the
    job's log backlog is full, and then the code's writes block: memory stays flat), until it
    ends or is stopped: SIGTERM, then SIGKILL after `grace` seconds."""
    container = launch.container

    def on_lines(when: int, lines: list[str], size: int) -> None:
        emit(LogLines(host, when, lines, size))

    container.start(on_lines)
    deadline = None if max_runtime is None else time.monotonic() + max_runtime
    while container.poll() is None:
        if deadline is not None and time.monotonic() >= deadline:
            stop.request("MaxRuntimeExceeded")
        if stop.wait(0.05):
            break
    if container.poll() is None:
        container.stop(grace)
    code = container.wait()
    assert code is not None
    if launch.volume is not None:  # now, before anything of the host is cleaned up: full?
        observe_volume(launch.volume)
    return Exit(code, stop.reason if stop.requested else None)
