"""Starting an endpoint's worker: a detached process, so that the endpoint outlives the command
or request that created it (as a training job's worker does, openmaker/jobs/executor.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

from openmaker.jobs.executor import WorkerRef, process_reference
from openmaker.settings import Settings, process_environment, to_json


class Launcher:
    def __init__(self) -> None:
        # Workers started here and not yet seen to end (reaped, not left as zombies).
        self.children: list[subprocess.Popen[bytes]] = []

    def start(self, endpoint: str, settings: Settings, record: Callable[[WorkerRef], None]) -> None:
        """Start the worker of `endpoint`; `record` learns its process before it gets its
        order, so that a worker killed at any point is seen as lost."""
        self.reap()
        process = subprocess.Popen(
            [sys.executable, "-m", "openmaker.serving.worker_process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
            env=process_environment(),
        )
        assert process.stdin is not None
        try:
            record(process_reference(process.pid))
            # On its standard input: the settings may hold the store's credentials.
            order = {"endpoint": endpoint, "settings": to_json(settings.for_jobs())}
            process.stdin.write(json.dumps(order).encode())
        finally:
            process.stdin.close()  # without an order, the worker ends at once
        self.children.append(process)

    def reap(self) -> None:
        """Collect the workers that have ended (a long-lived server would keep zombies)."""
        self.children = [child for child in self.children if child.poll() is None]
