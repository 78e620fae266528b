"""The container runtime alone (openmaker/runtime/): a server started, answering and stopped with
its grace; a program run to completion with explicit binds; nothing of training involved."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from openmaker.runtime import Bind, Container, ContainerSpec, unavailable_reason

# What the runtime must never import: the resources that use it.
FORBIDDEN = ("openmaker.training.host", "openmaker.jobs", "openmaker.api")

sandboxed = pytest.mark.skipif(unavailable_reason() is not None, reason="needs the bwrap sandbox")

# A server that answers GET with its greeting and hostname; on SIGTERM it says so and, unless
# told to end, goes on serving (only SIGKILL ends it then).
SERVER = """
import http.server, os, signal, sys
def on_term(signum, frame):
    print("got SIGTERM", flush=True)
    if os.environ.get("END_ON_TERM"):
        sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{os.environ['GREETING']} from {os.uname().nodename}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Hello)
print("serving", flush=True)
server.serve_forever()
"""


class Lines:
    """The lines a container delivers, collected from its reader thread."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, when: int, lines: list[str], size: int) -> None:
        with self._lock:
            self.lines.extend(lines)

    def has(self, text: str) -> bool:
        with self._lock:
            return any(text in line for line in self.lines)


def wait_until(condition: Callable[[], object], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def answer(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/hello", timeout=5) as response:
            return str(response.read().decode())
    except (urllib.error.URLError, ConnectionError):
        return None


Server = Callable[..., tuple[Container, Lines, int]]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    started: list[Container] = []

    def start(**env: str) -> tuple[Container, Lines, int]:
        port = free_port()
        spec = ContainerSpec(
            argv=["python3", "-c", SERVER, str(port)],
            env={"PATH": "/usr/bin:/bin", "GREETING": "hello", **env},
            state_dir=tmp_path / f"server-{len(started)}",
            hostname="web-1",
        )
        spec.state_dir.mkdir()
        container = Container(spec)
        lines = Lines()
        container.start(lines)
        started.append(container)
        return container, lines, port

    try:
        yield start
    finally:
        for container in started:
            container.kill()
            container.wait()


def test_the_runtime_loads_nothing_of_what_uses_it() -> None:
    """Its imports (tests/test_layers.py reads them) bring in no host, job or API module."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, openmaker.runtime; print(*sorted(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert [name for name in loaded if name.startswith(FORBIDDEN)] == []


@sandboxed
def test_a_server_runs_until_stopped_then_is_killed_after_its_grace(server: Server) -> None:
    container, lines, port = server()
    wait_until(lambda: answer(port), "the server's answer")
    assert answer(port) == "hello from web-1"
    wait_until(lambda: lines.has('"GET /hello HTTP/1.1" 200'), "the server's request log line")
    assert lines.has("serving")
    assert container.poll() is None

    # It handles SIGTERM and serves on: only SIGKILL, once the grace is over, ends it.
    code = container.stop(grace=1.0)
    assert lines.has("got SIGTERM")
    assert code in (-signal.SIGKILL, 128 + signal.SIGKILL)
    assert answer(port) is None


@sandboxed
def test_a_server_that_ends_on_sigterm_ends_within_its_grace(server: Server) -> None:
    container, lines, port = server(END_ON_TERM="1")
    wait_until(lambda: answer(port), "the server's answer")
    assert container.stop(grace=600.0) == 0
    assert lines.has("got SIGTERM")


@sandboxed
def test_a_program_runs_to_completion_with_explicit_binds(tmp_path: Path) -> None:
    given, written, state = tmp_path / "given", tmp_path / "written", tmp_path / "state"
    for folder in (given, written, state):
        folder.mkdir()
    (given / "in.txt").write_text("read me\n")
    # Hidden paths are the machine's (the container's /tmp is its own): outside /tmp.
    private = Path(f"/var/tmp/openmaker-runtime-{os.getpid()}")
    private.mkdir()
    (private / "secret.txt").write_text("the machine's own")
    script = (
        "cat /data/in.txt; "
        'echo changed > /data/in.txt && echo "read-only bind written"; '
        'echo "$GREETING" > /out/greeting; '
        "touch /etc/openmaker-runtime-marker && echo 'root written'; "
        f"ls -A {private} | wc -l; hostname; pwd; exit 3"
    )
    spec = ContainerSpec(
        argv=["sh", "-c", script],
        env={"PATH": "/usr/bin:/bin", "GREETING": "bonjour"},
        state_dir=state,
        binds=(
            Bind(str(given), "/data", read_only=True),
            Bind(str(written), "/out", read_only=False),
        ),
        workdir="/out",
        hostname="batch-1",
        hidden=(private,),
    )
    lines = Lines()
    container = Container(spec)
    try:
        container.start(lines)
        assert container.wait() == 3
    finally:
        container.kill()
        (private / "secret.txt").unlink()
        private.rmdir()
    assert lines.lines[0] == "read me"
    assert "Read-only file system" in lines.lines[1]  # the shell's word on the write
    assert lines.lines[2:] == [
        "root written",
        "0",
        "batch-1",
        "/out",
    ]
    assert (given / "in.txt").read_text() == "read me\n"
    assert (written / "greeting").read_text() == "bonjour\n"
    assert not Path("/etc/openmaker-runtime-marker").exists()  # copy-on-write


def test_an_unsandboxed_container_ends_what_it_left_behind(tmp_path: Path) -> None:
    tag = f"runtime-test/{os.getpid()}"
    spec = ContainerSpec(
        argv=["sh", "-c", "setsid sleep 600 >/dev/null 2>&1 & echo left $GREETING"],
        env={"PATH": "/usr/bin:/bin", "GREETING": "behind"},
        state_dir=tmp_path,
        sandboxed=False,
        workdir=str(tmp_path),
        tag=tag,
    )
    lines = Lines()
    container = Container(spec)
    container.start(lines)
    assert container.wait() == 0
    assert lines.lines == ["left behind"]
    marker = f"OPENMAKER_PROCESS_TAG={tag}".encode()
    assert not [pid for pid in _pids() if marker in _environment(pid)]


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _environment(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return []
