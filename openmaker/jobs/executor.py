"""Executors start the process that runs a job's hosts.

`local`: a detached worker process on this machine, so that a job outlives the command (or
request) that created it. A worker spends most of its start importing openmaker (SQLAlchemy
above all), so a process that submits jobs again and again keeps one worker started ahead,
waiting on its standard input for the next job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Protocol

from openmaker.config import Settings


class Executor(Protocol):
    def submit(self, arn: str, request: dict[str, Any]) -> int | None:
        """Start running the job; the process that runs it, when it runs on this machine."""

    def lost(self, worker_pid: int) -> bool:
        """Whether the process that ran a job is gone (without saying how the job ended)."""


class LocalExecutor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.submitted = 0
        self.spare: subprocess.Popen[bytes] | None = None

    def submit(self, arn: str, request: dict[str, Any]) -> int | None:
        job_name = request["TrainingJobName"]
        (self.settings.jobs_dir / job_name).mkdir(parents=True, exist_ok=True)
        worker = self.spare or _start_worker()
        self.spare = None
        # The job's environment is the submitter's now, not when the worker started.
        order = {
            "job": job_name,
            "arn": arn,
            "request": request,
            "home": str(self.settings.home),
            "env": dict(os.environ),
        }
        assert worker.stdin is not None
        worker.stdin.write(json.dumps(order).encode())
        worker.stdin.close()
        self.submitted += 1
        if self.submitted > 1:
            self.spare = _start_worker()
        return worker.pid

    def lost(self, worker_pid: int) -> bool:
        try:
            stat = Path(f"/proc/{worker_pid}/stat").read_text()
        except FileNotFoundError:
            return True
        # A worker that was a child of this process lingers as a zombie until reaped.
        return stat.rsplit(")", 1)[1].split()[0] == "Z"


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
    )
