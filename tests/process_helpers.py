"""Finding and killing the real processes of a job: its worker, its code, what it left."""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Callable
from pathlib import Path

from openmaker.jobs.db import JobRecord, TrainingJob
from openmaker.jobs.executor import local_process
from openmaker.training.service import TrainingJobs


def job_processes(job_name: str) -> list[int]:
    """Every process whose environment says it belongs to the job (its sandbox and code)."""
    marker = f"TRAINING_JOB_NAME={job_name}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in environ:
            found.append(int(entry.name))
    return found


def code_process(job_name: str, program: str = "/opt/program/train") -> int | None:
    """The job's own training program (not the sandbox around it)."""
    for pid in job_processes(job_name):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if program.encode() in argv[:2]:
            return pid
    return None


def hold(pid: int) -> int:
    """A pidfd of a live process: it names that process alone, even once its pid is reused."""
    return os.pidfd_open(pid)


def wait_gone(pidfd: int, what: str, timeout: float = 30) -> None:
    """Wait until the process held by `pidfd` has ended, then close the pidfd."""
    try:
        assert select.select([pidfd], [], [], timeout)[0], f"{what} still runs"
    finally:
        os.close(pidfd)


def wait_for_code(job_name: str, program: str = "/opt/program/train", timeout: float = 60) -> int:
    """The pid of the job's own training program, once it runs."""
    wait_until(lambda: code_process(job_name, program), f"the code of {job_name}", timeout)
    pid = code_process(job_name, program)
    assert pid is not None
    return pid


# Job code that waits for the test at chosen points: SIGUSR1 is blocked first, so a release that
# comes before the code waits stays pending (never kills it); each AWAIT_RELEASE takes one. A
# stop ends the code at once, waiting or not (it is its sandbox's pid 1, where SIGTERM has no
# default action; and sigwait goes on waiting through a signal that has a handler).
HOLD = (
    "import os, signal\n"
    "signal.signal(signal.SIGTERM, lambda *_: os._exit(143))\n"
    "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})\n"
)
AWAIT_RELEASE = (
    "if signal.sigwait({signal.SIGUSR1, signal.SIGTERM}) == signal.SIGTERM:\n    os._exit(143)\n"
)


def release(job_name: str) -> None:
    """Let the job's code (see HOLD) go on past the AWAIT_RELEASE it waits in."""
    os.kill(wait_for_code(job_name), signal.SIGUSR1)


def worker_pid(jobs: TrainingJobs, job_name: str) -> int | None:
    with jobs.sessions() as session:
        job = session.get(TrainingJob, job_name)
        return pid_of(job)


def pid_of(job: JobRecord | None) -> int | None:
    """The PID of the local process that runs (or starts) `job`, from its worker reference."""
    process = None if job is None or job.worker is None else local_process(job.worker)
    return None if process is None else process[0]


def wait_until(condition: Callable[[], object], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def wait_for_no_processes(job_name: str, timeout: float = 15) -> None:
    wait_until(lambda: not job_processes(job_name), f"the processes of {job_name} to end", timeout)


def processes_mentioning(text: str) -> list[int]:
    """Processes whose command line holds `text` (e.g. a test's own folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found
