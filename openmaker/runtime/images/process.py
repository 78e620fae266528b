"""The image tools (skopeo, umoci) run so that a stop interrupts them: each in a process group
of its own (with whatever it starts, such as a credential helper), killed as a group once the
caller's `cancelled` says so (StopTrainingJob, DeleteEndpoint), checked every tenth of a second.
A group of its own is out of reach of whatever kills the caller's group: the tool is started
through `setpriv --pdeathsig KILL`, so that it dies with the caller (a job's worker killed with
SIGKILL) rather than pull on for no one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass

from openmaker.settings import process_environment

# True once the work the pull is for was stopped.
Cancelled = Callable[[], bool]
CHECK_SECONDS = 0.1


class Interrupted(RuntimeError):
    """The tool was killed because its caller was stopped."""


@dataclass(frozen=True)
class Finished:
    code: int
    stdout: bytes
    stderr: str


def never() -> bool:
    return False


def run(
    argv: list[str],
    cancelled: Cancelled = never,
    on_line: Callable[[str], None] | None = None,
) -> Finished:
    """Run `argv` to its end, each line of its output to `on_line` as it comes (else kept in
    `stdout`); Interrupted once `cancelled()` turns true."""
    with tempfile.TemporaryFile() as errors:
        popen = subprocess.Popen(
            _dying_with_caller() + argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errors,
            env=process_environment(),
            start_new_session=True,
        )
        assert popen.stdout is not None
        done = threading.Event()
        killed = threading.Event()
        watcher = threading.Thread(
            target=_watch, args=(popen, cancelled, done, killed), daemon=True
        )
        watcher.start()
        kept = []
        try:
            for raw in popen.stdout:
                if on_line is None:
                    kept.append(raw)
                else:
                    on_line(raw.decode(errors="replace").strip())
            code = popen.wait()
        finally:
            done.set()
            watcher.join()
            if popen.poll() is None:  # the caller's own failure (on_line raised): no orphan
                _kill_group(popen)
                popen.wait()
            popen.stdout.close()
        if killed.is_set():
            raise Interrupted(f"{os.path.basename(argv[0])} was stopped")
        errors.seek(0)
        return Finished(code, b"".join(kept), errors.read().decode(errors="replace"))


def _dying_with_caller() -> list[str]:
    # The signal is sent when the thread that started it ends: `run` waits in that thread.
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


def _watch(
    popen: subprocess.Popen[bytes],
    cancelled: Cancelled,
    done: threading.Event,
    killed: threading.Event,
) -> None:
    while not done.wait(CHECK_SECONDS):
        if cancelled():
            killed.set()
            _kill_group(popen)
            return


def _kill_group(popen: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(popen.pid, signal.SIGKILL)
