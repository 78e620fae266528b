"""Running a host's code: logs line by line, the stopping condition, the exit status."""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from dataclasses import dataclass

from openmaker.host.events import Emit, LogLine
from openmaker.host.sandbox import Launch, Process

# SageMaker gives a stopped container 120 s between SIGTERM and SIGKILL.
DEFAULT_GRACE_SECONDS = 120.0
FAILURE_REASON_LIMIT = 1024
LOG_LINE_LIMIT = 256 * 1024


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
    process = Process(launch)
    reader = threading.Thread(target=_pump_logs, args=(process, host, emit), daemon=True)
    reader.start()
    deadline = None if max_runtime is None else time.monotonic() + max_runtime
    while process.popen.poll() is None:
        if deadline is not None and time.monotonic() >= deadline:
            stop.request("MaxRuntimeExceeded")
        if stop.wait(0.05):
            break
    if process.popen.poll() is None:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace)
        if process.popen.poll() is None:
            process.kill()
    code = process.wait()
    reader.join()
    return Exit(code, stop.reason if stop.requested else None)


def _pump_logs(process: Process, host: str, emit: Emit) -> None:
    # A line is cut where CloudWatch Logs cuts an event: output without line breaks must not
    # pile up in memory.
    while raw := process.stdout.readline(LOG_LINE_LIMIT):
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        emit(LogLine(host, int(time.time() * 1000), line))
