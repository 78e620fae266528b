"""Supervising a host's running container: logs line by line, the time limit and stop
requests, the exit status."""

from __future__ import annotations

import contextlib
import os
import select
import time
from collections.abc import Iterator
from dataclasses import dataclass

from openmaker.training.host.container import Launch
from openmaker.training.host.events import Emit, LogLines
from openmaker.training.host.stop import StopControl, StopReason
from openmaker.training.host.volume import observe as observe_volume

# SageMaker gives a stopped container 120 s between SIGTERM and SIGKILL.
DEFAULT_GRACE_SECONDS = 120.0
FAILURE_REASON_LIMIT = 1024
STOP_CHECK_SECONDS = 0.05


@dataclass(frozen=True)
class Exit:
    code: int
    # Why the code was stopped before its end, else None.
    stopped: StopReason | None


def supervise(
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
    # The code's end wakes this at once; a stop request or the time limit within STOP_CHECK.
    with _closing(container.end_fd()) as ended:
        while not select.select([ended], [], [], STOP_CHECK_SECONDS)[0]:
            if deadline is not None and time.monotonic() >= deadline:
                stop.request(StopReason.MAX_RUNTIME_EXCEEDED)
            if stop.requested:
                break
    if container.poll() is None:
        container.stop(grace)
    code = container.wait()
    assert code is not None
    if launch.volume is not None:  # now, before anything of the host is cleaned up: full?
        observe_volume(launch.volume)
    return Exit(code, stop.reason if stop.requested else None)


@contextlib.contextmanager
def _closing(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)
