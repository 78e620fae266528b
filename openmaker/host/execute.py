"""Running a host's code: logs line by line, the stopping condition, the exit status."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, replace

from openmaker.host.events import Emit, LogLines
from openmaker.host.sandbox import Launch, Process

# SageMaker gives a stopped container 120 s between SIGTERM and SIGKILL.
DEFAULT_GRACE_SECONDS = 120.0
FAILURE_REASON_LIMIT = 1024
LOG_LINE_LIMIT = 256 * 1024
# Output is read in large pieces: a flood of short lines costs few system calls and events.
READ_SIZE = 1024 * 1024
# Lines per event at most: what the recorder holds back is then measured finely enough.
EVENT_LINES = 10_000
# Marks every process of an unsandboxed host (see run_process).
TAG_VARIABLE = "OPENMAKER_PROCESS_TAG"


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
    tag = None
    if not launch.sandboxed:
        # Without a PID namespace, what the code leaves behind (a daemon in a session of its
        # own) is found by this variable, which every process it starts inherits.
        tag = process_tag(launch.env.get("TRAINING_JOB_NAME", ""), host)
        launch = replace(launch, env={**launch.env, TAG_VARIABLE: tag})
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
    if tag is not None:
        # Sandboxed, the kernel ends the PID namespace with its first process; here, openmaker
        # ends the rest itself, before waiting for the end of the output they may hold open.
        kill_tagged(tag)
    reader.join()
    return Exit(code, stop.reason if stop.requested else None)


def process_tag(job_name: str, host: str) -> str:
    """The mark of an unsandboxed host's processes: known from the job alone, so that whoever
    cleans up after a worker that was killed can end what it left (`kill_tagged`)."""
    return f"{job_name}/{host}"


def kill_tagged(tag: str) -> None:
    """SIGKILL every process that carries `tag`, again until none is left (they may fork)."""
    marker = f"{TAG_VARIABLE}={tag}".encode()
    for _ in range(100):
        found = [pid for pid in _pids() if marker in _environment(pid)]
        if not found:
            return
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def _pids() -> list[int]:
    own = os.getpid()
    return [int(name) for name in os.listdir("/proc") if name.isdigit() and int(name) != own]


def _environment(pid: int) -> list[bytes]:
    """The variables a process started with (empty for a zombie, or one not ours to read)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as environ:
            return environ.read().split(b"\0")
    except OSError:
        return []


def _pump_logs(process: Process, host: str, emit: Emit) -> None:
    """Forward the code's output as lines. `emit` blocks while the job's log backlog is full,
    and then the code's writes block once the pipe is full, as under a container's log
    driver: whatever the code prints, memory stays flat."""
    fd = process.stdout.fileno()
    with contextlib.suppress(OSError):  # a larger pipe only saves system calls
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, READ_SIZE)
    rest = b""
    while chunk := os.read(fd, READ_SIZE):
        messages, rest = split_lines(rest + chunk)
        now = int(time.time() * 1000)
        for start in range(0, len(messages), EVENT_LINES):
            part = messages[start : start + EVENT_LINES]
            emit(LogLines(host, now, part, len(chunk) * len(part) // len(messages)))
    if rest:
        emit(LogLines(host, int(time.time() * 1000), [_text(rest)], len(rest)))


def split_lines(data: bytes) -> tuple[list[str], bytes]:
    """The lines `data` completes, without their line ends, and what is left of an unfinished
    line. A line is cut where CloudWatch Logs cuts an event (LOG_LINE_LIMIT bytes): output
    without line breaks must not pile up in memory."""
    end = data.rfind(b"\n") + 1
    text = data[:end].decode("utf-8", errors="replace")
    messages = text.split("\n")[:-1]
    if "\r" in text:
        messages = [m.rstrip("\r") for m in messages]
    # A character takes at most 4 bytes: only lines this long may need cutting.
    if max(map(len, messages), default=0) > LOG_LINE_LIMIT // 4:
        messages = [piece for m in messages for piece in _cut_line(m)]
    pieces, rest = _cut(data[end:])
    messages.extend(_text(piece) for piece in pieces)
    return messages, rest


def _cut_line(message: str) -> list[str]:
    raw = message.encode()
    if len(raw) <= LOG_LINE_LIMIT:
        return [message]
    pieces, rest = _cut(raw)
    return [_text(piece) for piece in [*pieces, rest]]


def _cut(raw: bytes) -> tuple[list[bytes], bytes]:
    """Pieces of at most LOG_LINE_LIMIT bytes, none splitting a character, and what is left (at
    most the limit)."""
    pieces = []
    while len(raw) > LOG_LINE_LIMIT:
        cut = LOG_LINE_LIMIT
        # Back to the start of a character the limit falls in (continuation bytes: 10xxxxxx).
        while cut > LOG_LINE_LIMIT - 3 and raw[cut] & 0xC0 == 0x80:
            cut -= 1
        pieces.append(raw[:cut])
        raw = raw[cut:]
    return pieces, raw


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").rstrip("\r\n")
