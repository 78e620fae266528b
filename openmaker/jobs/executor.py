"""Executors start the process that runs a job's hosts, and answer for it afterwards.

What runs a job is named by an opaque worker reference, a string only the executor reads
(stored as is in the job's `worker` column): whether it is gone (`lost`), how to ask it to stop
(`stop`), how to name it to a person (`describe`). The process that starts a job is named the
same way while it does (`this_process`), so every executor understands local references.

`local`: a detached worker process on this machine, so that a job outlives the command (or
request) that created it. A worker spends most of its start importing openmaker (SQLAlchemy
above all), so a process that submits jobs again and again keeps one worker started ahead,
waiting on its standard input for the next job. A server forks its workers from a fork server
instead (`use_fork_server`, openmaker/jobs/forkserver.py): no Python start per job. A worker is
told the job's kind and the module that runs that kind (`ResourceKind.runner`): the executor
knows no kind of resource.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from openmaker.settings import Settings, process_environment, to_json

# What names the process running (or starting) a job; only executors read one.
WorkerRef = str


@dataclass(frozen=True)
class Order:
    """A job for a worker: attempt `attempt` at the resource `name` (a `kind`, which the module
    `runner` runs), with the share of the machine `placement`."""

    kind: str  # ResourceKind.name: "TrainingJob"
    runner: str  # ResourceKind.runner
    name: str
    arn: str
    request: dict[str, Any]
    placement: dict[str, Any] | None = None
    attempt: int = 1
    # The worker that runs it, as the executor named it (to `before_start`): the worker takes
    # the job over under that name.
    worker: WorkerRef | None = None
    # The job's key on this machine (ResourceKind.local_key; None: its name, a training job's).
    key: str | None = None

    @property
    def folder(self) -> str:
        """Its folder's name under the jobs folder (launch.json, worker.log, its hosts')."""
        return self.key or self.name

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Order:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


class Runner(Protocol):
    """A module that runs one kind of job in a worker process (`ResourceKind.runner`)."""

    def run(self, order: Order, settings: Settings, stop_before_start: threading.Event) -> None:
        """Run `order` to its end; `stop_before_start` is set when a stop came early."""


class Executor(Protocol):
    def submit(
        self,
        order: Order,
        settings: Settings,
        before_start: Callable[[WorkerRef], None] | None = None,
    ) -> WorkerRef:
        """Start `order` with the submitter's settings; the worker that runs it. `before_start`
        learns that worker before it gets the job: once recorded, a worker killed at any point
        leaves no job running unseen."""

    def start_ahead(self, runner: str) -> None:
        """Prepare the worker of a next job (run by `runner`) early, where that saves time."""

    def lost(self, worker: WorkerRef) -> bool:
        """Whether the worker that ran a job is gone (without saying how the job ended)."""

    def stop(self, worker: WorkerRef) -> None:
        """Ask the worker to stop its job (it records the end); nothing when it is gone."""

    def describe(self, worker: WorkerRef) -> str:
        """The worker as a person reads it in a message: "process 1234"."""

    def reap(self) -> None:
        """Collect the workers this executor started that have ended."""


def executor_for(settings: Settings) -> Executor:
    """The executor `settings` choose. Every worker is a local process for now: with
    OPENMAKER_EXECUTOR=ray, the local worker runs the job's hosts on Ray (training/runners.py)."""
    return LocalExecutor(settings)


def this_process() -> WorkerRef:
    """The reference of the calling process (a starter owns the jobs it starts under it)."""
    return process_reference(os.getpid())


def process_reference(pid: int) -> WorkerRef:
    """Process `pid` as "local:<pid>:<start>": with its start time (clock ticks after boot), a
    PID names the process for good, since PIDs are reused."""
    return local_reference(pid, process_start_time(pid))


def local_reference(pid: int, started: int | None) -> WorkerRef:
    return f"local:{pid}" if started is None else f"local:{pid}:{started}"


def local_process(worker: WorkerRef) -> tuple[int, int | None] | None:
    """The PID and start time a local reference names; None for another kind of reference."""
    scheme, _, rest = worker.partition(":")
    if scheme != "local" or not rest:
        return None
    pid, _, started = rest.partition(":")
    return int(pid), int(started) if started else None


class ForkServer:
    """The submitter's end of a fork server (openmaker/jobs/forkserver.py)."""

    def __init__(
        self, runners: list[str], executor: str = "local", database: tuple[str, float] | None = None
    ) -> None:
        """`database`: the submitter's (URL, busy seconds), whose statements the fork server
        compiles for its workers."""
        self.runners, self.executor = runners, executor
        self.options = [] if database is None else ["--database", database[0], str(database[1])]
        self._lock = threading.Lock()  # one request and its answer at a time
        self._channel, self._process = self._start()

    def _start(self) -> tuple[socket.socket, subprocess.Popen[bytes]]:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            # Fork and exec, as every worker was started: it inherits nothing of this process
            # but its standard input (close_fds) and a worker's environment.
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "openmaker.jobs.forkserver",
                    self.executor,
                    *self.options,
                    *self.runners,
                ],
                stdin=theirs.fileno(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                close_fds=True,
                env=process_environment(),
            )
        return mine, process

    def fork(self, runner: str) -> tuple[int, IO[bytes]]:
        """A new worker for `runner`: its PID, and the pipe to write its order to."""
        with self._lock:
            try:
                return self._ask(runner)
            except OSError:  # it was killed: a new one (once) rather than no job at all
                self.close()
                self._channel, self._process = self._start()
                return self._ask(runner)

    def _ask(self, runner: str) -> tuple[int, IO[bytes]]:
        self._channel.send(runner.encode())
        answer, descriptors, _, _ = socket.recv_fds(self._channel, 4096, 1)
        if not descriptors:
            if not answer:
                raise ConnectionError("the fork server ended")
            raise RuntimeError(f"the fork server refused: {answer.decode()}")
        return int(answer), os.fdopen(descriptors[0], "wb")

    def close(self) -> None:
        """The fork server ends (its workers go on)."""
        self._channel.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=5)


# The fork server of this process, once `use_fork_server` started it.
_fork_server: ForkServer | None = None


def use_fork_server(
    runners: list[str], executor: str = "local", database: tuple[str, float] | None = None
) -> None:
    """From now on, every local executor of this process forks its workers from one fork
    server, which has loaded `runners` (ResourceKind.runner) ahead, and what they need under
    `executor` (OPENMAKER_EXECUTOR). For a long-lived submitter: call it early, before threads
    or listening sockets exist. `database`: see ForkServer."""
    global _fork_server
    if _fork_server is None:
        _fork_server = ForkServer(runners, executor, database)


def stop_fork_server() -> None:
    global _fork_server
    if _fork_server is not None:
        _fork_server.close()
        _fork_server = None


class LocalExecutor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.submitted = 0
        self.spare: subprocess.Popen[bytes] | None = None
        # Workers started here and not yet seen to end.
        self.children: list[subprocess.Popen[bytes]] = []

    def submit(
        self,
        order: Order,
        settings: Settings,
        before_start: Callable[[WorkerRef], None] | None = None,
    ) -> WorkerRef:
        (self.settings.jobs_dir / order.folder).mkdir(parents=True, exist_ok=True)
        if _fork_server is not None:
            pid, pipe = _fork_server.fork(order.runner)
            return self._hand_over(order, settings, before_start, pid, pipe)
        worker = self.spare or _start_worker(order.runner, self.settings.executor)
        self.spare = None
        assert worker.stdin is not None
        self.children.append(worker)
        started = self._hand_over(order, settings, before_start, worker.pid, worker.stdin)
        self.submitted += 1
        if self.submitted > 1:
            # Likely the next job is of the same kind: the spare loads its runner meanwhile.
            self.spare = _start_worker(order.runner, self.settings.executor)
        return started

    @staticmethod
    def _hand_over(
        order: Order,
        settings: Settings,
        before_start: Callable[[WorkerRef], None] | None,
        pid: int,
        pipe: IO[bytes],
    ) -> WorkerRef:
        """Give worker `pid` its order through `pipe` (its standard input, or the pipe the fork
        server made) once `before_start` has learnt it."""
        started = process_reference(pid)
        order = dataclasses.replace(order, worker=started)
        # Through a pipe, never its command line: the settings may hold the S3 server's
        # credentials.
        message = {**order.to_json(), "settings": to_json(settings.for_jobs())}
        try:
            if before_start is not None:
                before_start(started)
            pipe.write(json.dumps(message).encode())
        finally:
            pipe.close()  # without an order, the worker ends at once
        return started

    def start_ahead(self, runner: str) -> None:
        """Start the worker of the next job (run by `runner`) now, so that its start (Python,
        imports) overlaps what the submitter does before it submits (the CLI's own imports,
        the checks)."""
        if self.spare is None and _fork_server is None:
            self.spare = _start_worker(runner, self.settings.executor)

    def lost(self, worker: WorkerRef) -> bool:
        process = local_process(worker)
        return process is None or process_lost(*process)

    def stop(self, worker: WorkerRef) -> None:
        process = local_process(worker)
        # A worker that is gone (or a PID another process took since) is left alone.
        if process is not None and not process_lost(*process):
            with contextlib.suppress(ProcessLookupError):
                os.kill(process[0], signal.SIGTERM)

    def describe(self, worker: WorkerRef) -> str:
        process = local_process(worker)
        return worker if process is None else f"process {process[0]}"

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


def _start_worker(runner: str, executor: str) -> subprocess.Popen[bytes]:
    """A worker that loads `runner` (the module that runs a job of its kind), and what it needs
    under `executor`, while it waits."""
    # Its own session: a job goes on when the submitter is interrupted. A spare whose
    # submitter ends sees the end of its input and exits.
    return subprocess.Popen(
        [sys.executable, "-m", "openmaker.jobs.worker_process", runner, executor],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
        # Everything it needs of openmaker's settings comes in its order.
        env=process_environment(),
    )
