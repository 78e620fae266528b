"""Nothing leaves the machine: a Python audit hook that refuses every non-loopback address.

The hook sees `socket.connect`, `socket.getaddrinfo` (so a name lookup of an AWS host counts,
before any packet), `socket.gethostbyname(_ex)`, `socket.sendto` and `socket.sendmsg`. An
address that is not loopback (or a unix socket) is written to a report file and refused with
`ConnectionRefusedError`; code that swallows the error (telemetry does) still leaves its line
in the report, which the test reads.

Two ways in:
- a client program in a subprocess: `Egress.command([...])` wraps its command line as
  `python tests/egress.py REPORT -- PROGRAM ARGS` (a script path, or `-m module`), which arms
  the hook and runs the program as `python PROGRAM ARGS` would;
- the test's own process: `with egress.armed():` (an audit hook cannot be removed, so the
  process's one hook is armed and disarmed).
The `no_egress` fixture (tests/conftest.py) does both and fails the test on any report.
"""

from __future__ import annotations

import ipaddress
import os
import runpy
import socket
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_EVENTS = frozenset(
    {
        "socket.connect",
        "socket.getaddrinfo",
        "socket.gethostbyname",
        "socket.gethostbyname_ex",
        "socket.sendto",
        "socket.sendmsg",
    }
)
_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
# Where the armed hook reports: None while disarmed.
_report: list[Path] = []
_installed = False


def outside(event: str, args: tuple[Any, ...]) -> str | None:
    """The host `event` would reach when it is not this machine's loopback, else None."""
    if event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex"):
        host = args[0]
    elif event in ("socket.connect", "socket.sendto"):
        sock, address = args[0], args[1]
        if getattr(sock, "family", None) == socket.AF_UNIX or not isinstance(address, tuple):
            return None
        host = address[0]
    elif event == "socket.sendmsg":
        sock, address = args[0], args[1]
        if address is None or not isinstance(address, tuple):
            return None  # a connected socket: its connect was checked
        host = address[0]
    else:
        return None
    if host is None:
        return None  # a passive lookup: this machine's own addresses
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    name = str(host).rstrip(".").lower()
    if name in _LOCAL_NAMES or name.endswith(".localhost"):
        return None
    try:
        if ipaddress.ip_address(name.split("%", 1)[0]).is_loopback:
            return None
    except ValueError:
        pass  # a name other than localhost: resolving it already leaves the machine
    return str(host)


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if not _report or event not in _EVENTS:
        return
    host = outside(event, args)
    if host is None:
        return
    line = f"{event} {host!r} (pid {os.getpid()})\n"
    descriptor = os.open(_report[-1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(descriptor, line.encode())
    finally:
        os.close(descriptor)
    raise ConnectionRefusedError(f"egress refused by the test: {line.strip()}")


def install(report: Path) -> None:
    """Arm the hook in this process, reporting to `report`."""
    global _installed
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True
    _report.append(report)


@contextmanager
def armed(report: Path) -> Iterator[None]:
    install(report)
    try:
        yield
    finally:
        _report.remove(report)


class Egress:
    """One test's guard: its report file, subprocess commands and in-process arming."""

    def __init__(self, report: Path) -> None:
        self.report = report

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` (`[python, script, ...]` or `[python, "-m", module, ...]`, or an executable
        Python script such as `aws`) run under the hook."""
        program = list(argv)
        if Path(program[0]).name.startswith("python"):
            program = program[1:]
        return [sys.executable, str(Path(__file__)), str(self.report), "--", *program]

    @contextmanager
    def armed(self) -> Iterator[None]:
        with armed(self.report):
            yield

    def violations(self) -> list[str]:
        try:
            return self.report.read_text().splitlines()
        except FileNotFoundError:
            return []


def _run(argv: list[str]) -> None:
    """`python egress.py REPORT -- PROGRAM ARGS`: PROGRAM run as `python PROGRAM ARGS` runs it."""
    report, separator, *program = argv
    if separator != "--" or not program:
        raise SystemExit("usage: egress.py REPORT -- (SCRIPT | -m MODULE) [ARGS...]")
    install(Path(report))
    if program[0] == "-m":
        sys.argv = [program[1], *program[2:]]
        sys.path[0] = os.getcwd()
        runpy.run_module(program[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = program
        sys.path[0] = str(Path(program[0]).resolve().parent)
        runpy.run_path(program[0], run_name="__main__")


if __name__ == "__main__":
    _run(sys.argv[1:])
