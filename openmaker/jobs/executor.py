"""Executors start the process that runs a job's hosts.

`local`: a detached worker process on this machine, so that a job outlives the command (or
request) that created it. A worker spends most of its start importing openmaker (SQLAlchemy
above all), so a process that submits jobs again and again keeps one worker started ahead,
waiting on its standard input for the next job.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from openmaker.settings import Settings, process_environment, to_json


@dataclass(frozen=True)
class Worker:
    pid: int
    # Its start time (clock ticks after boot): with the PID, it names the process for good.
    started: int | None


class Executor(Protocol):
    def submit(
        self,
        arn: str,
        request: dict[str, Any],
        settings: Settings,
        placement: dict[str, Any] | None = None,
        attempt: int = 1,
        before_start: Callable[[Worker], None] | None = None,
    ) -> Worker | None:
        """Start attempt `attempt` at the job with the submitter's settings and the share of
        the machine `placement`; the process that runs it, when on this machine.
        `before_start` learns that process before it gets the job: once recorded, a process
        killed at any point leaves no job running unseen."""

    def lost(self, worker_pid: int, started: int | None = None) -> bool:
        """Whether the process that ran a job is gone (without saying how the job ended)."""

    def reap(self) -> None:
        """Collect the workers this executor started that have ended."""


class LocalExecutor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.submitted = 0
        self.spare: subprocess.Popen[bytes] | None = None
        # Workers started here and not yet seen to end.
        self.children: list[subprocess.Popen[bytes]] = []

    def submit(
        self,
        arn: str,
        request: dict[str, Any],
        settings: Settings,
        placement: dict[str, Any] | None = None,
        attempt: int = 1,
        before_start: Callable[[Worker], None] | None = None,
    ) -> Worker | None:
        job_name = request["TrainingJobName"]
        (self.settings.jobs_dir / job_name).mkdir(parents=True, exist_ok=True)
        worker = self.spare or _start_worker()
        self.spare = None
        order = {
            "job": job_name,
            "arn": arn,
            "request": request,
            # On its standard input, never its command line: the settings may hold the S3
            # server's credentials.
            "settings": to_json(settings.for_jobs()),
            "placement": placement,
            "attempt": attempt,
        }
        assert worker.stdin is not None
        started = Worker(worker.pid, process_start_time(worker.pid))
        try:
            if before_start is not None:
                before_start(started)
            worker.stdin.write(json.dumps(order).encode())
        finally:
            worker.stdin.close()  # without an order, the worker ends at once
        self.children.append(worker)
        self.submitted += 1
        if self.submitted > 1:
            self.spare = _start_worker()
        return started

    def start_ahead(self) -> None:
        """Start the worker of the next job now, so that its start (Python, imports) overlaps
        what the submitter does before it submits (the CLI's own imports, the checks)."""
        if self.spare is None:
            self.spare = _start_worker()

    def lost(self, worker_pid: int, started: int | None = None) -> bool:
        return process_lost(worker_pid, started)

    def reap(self) -> None:
        # A worker that has ended stays a zombie until its exit status is read: a long-lived
        # submitter (`openmaker server`) would collect them.
        self.children = [child for child in self.children if child.poll() is None]


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat: when the process started, in clock ticks after boot."""
    stat = _stat_fields(pid)
    return None if stat is None else int(stat[19])


def process_lost(pid: int, started: int | None = None) -> bool:
    """Whether process `pid` (started at `started`, when known) has ended."""
    stat = _stat_fields(pid)
    # A worker that was a child of this process lingers as a zombie until reaped; a PID that
    # started at another time belongs to another process now.
    return stat is None or stat[0] == "Z" or (started is not None and int(stat[19]) != started)


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (field 3, the state, first)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    return stat.rsplit(")", 1)[1].split()


def _start_worker() -> subprocess.Popen[bytes]:
    # Its own session: a job goes on when the submitter is interrupted. A spare whose
    # submitter ends sees the end of its input and exits.
    return subprocess.Popen(
        [sys.executable, "-m", "openmaker.jobs.worker_process"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
        # Everything it needs of openmaker's settings comes in its order.
        env=process_environment(),
    )
