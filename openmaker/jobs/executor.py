"""Executors start the process that runs a job's hosts. `local`: a detached worker process
on this machine, so that a job outlives the command (or request) that created it."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Protocol

from openmaker.config import Settings


class Executor(Protocol):
    def submit(self, job_name: str) -> None: ...


class LocalExecutor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def submit(self, job_name: str) -> None:
        job_dir = self.settings.jobs_dir / job_name
        job_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["OPENMAKER_HOME"] = str(self.settings.home)
        # The worker's own output (not the job's logs) goes to a file, for post-mortems.
        with open(job_dir / "worker.log", "ab") as log:
            subprocess.Popen(
                [sys.executable, "-m", "openmaker.jobs.worker", job_name],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
