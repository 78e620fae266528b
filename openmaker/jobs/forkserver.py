"""The fork server: a single-threaded process that has imported what workers run, and forks a
worker per job, so that a job starts in milliseconds instead of after a Python start and its
imports (`python -m openmaker.jobs.forkserver EXECUTOR [--database URL BUSY] RUNNER...`; under
EXECUTOR=ray, Ray is among them; given the submitter's database, the statements each worker asks
first are compiled here once, at the first request, when the database surely exists).

A long-lived submitter (`openmaker server`) starts it before it serves anything, by fork and
exec, never as a fork of itself: the fork server and its workers hold no thread, no listening
socket, no secret of the submitter's — only what a worker started directly holds (its
environment is `process_environment()`; each worker gets its settings in its order).

Its standard input is a Unix socket (SOCK_SEQPACKET) to the submitter. A request is a runner's
module name (`ResourceKind.runner`); the answer is the new worker's PID, with the write end of
a pipe (SCM_RIGHTS) on which the worker waits for its order: the submitter writes the order
there as it writes a started worker's standard input. Each worker is a process of its own in a
session of its own, as a started one is. The fork server reaps its workers, and ends when the
submitter does (its socket closes); the workers go on.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import select
import signal
import socket
import sys
import threading
import traceback
from typing import NoReturn

from openmaker.jobs import worker_process

# How often ended workers are reaped when no request comes (a zombie counts as ended).
REAP_SECONDS = 0.5
MESSAGE_BYTES = 4096


def main() -> None:
    channel = socket.socket(fileno=0)
    executor, runners = sys.argv[1], sys.argv[2:]
    database: tuple[str, float] | None = None
    if runners[:1] == ["--database"]:
        database, runners = (runners[1], float(runners[2])), runners[3:]
    for name in runners:
        # What its workers need under the executor (Ray's modules), loaded here once: a
        # runner's `preload` starts no thread and opens no file.
        preload = getattr(worker_process.runner(name), "preload", None)
        if preload is not None:
            preload(executor)
    # Loaded by a worker's first engine, else: once here instead.
    import sqlite3  # noqa: F401

    import sqlalchemy.dialects.sqlite  # noqa: F401
    from sqlalchemy.orm import configure_mappers

    import openmaker.jobs.db  # noqa: F401 - every worker records its job through it

    # Else each worker's first query configures every mapped class (~7 ms of a job's CPU).
    configure_mappers()
    # A job's network looks its store's host name up, which loads this codec (and compiles
    # its expressions) in every worker, else.
    import encodings.idna  # noqa: F401

    # Read by every job's hosts (their opening notes): the file once, here.
    from openmaker.instances import catalog

    catalog()
    # What is loaded now stays shared with every worker: the collector never touches it.
    gc.freeze()
    while True:
        ready, _, _ = select.select([channel], [], [], REAP_SECONDS)
        _reap()
        if not ready:
            continue
        request = channel.recv(MESSAGE_BYTES)
        if not request:
            return  # the submitter ended
        if database is not None:
            _warm(*database)
            database = None
        try:
            pid, order_pipe = _fork(request.decode())
        except (Exception, SystemExit) as exc:  # a runner refused, a fork failed: reported
            channel.send(f"error {exc}".encode())
            continue
        if pid == 0:  # the worker
            _end_worker(_worker(order_pipe, channel))
        try:
            socket.send_fds(channel, [str(pid).encode()], [order_pipe])
        finally:
            os.close(order_pipe)


def _warm(url: str, busy_seconds: float) -> None:
    from openmaker.jobs.db import warm  # loaded already

    try:
        warm(url, busy_seconds)
    except Exception:  # each worker then compiles what it asks, as without
        traceback.print_exc()
    gc.freeze()


def _fork(runner: str) -> tuple[int, int]:
    """A worker for `runner`: (its PID, the write end of the pipe it waits on for its order)
    here; (0, the read end) in the worker."""
    worker_process.runner(runner)  # refused unless openmaker's; loaded here once
    read_end, write_end = os.pipe()
    # No stop can reach the worker before it catches it: it is blocked until then.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    pid = -1
    try:
        pid = os.fork()
        if pid == 0:
            os.close(write_end)
            return 0, read_end
    finally:
        if pid != 0:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    os.close(read_end)
    return pid, write_end


def _worker(order_pipe: int, channel: socket.socket) -> int:
    """In the forked worker: wait for the order on `order_pipe`, run it; the exit status."""
    try:
        channel.detach()  # fd 0 becomes the order's pipe: none of the fork server's is kept
        os.dup2(order_pipe, 0)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        os.setsid()  # a job goes on when its submitter is interrupted
        worker_process.catch_stop()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        # What the fork server loaded stays frozen: the worker's collections never walk (and
        # so never copy) the pages it shares with it.
        data = _read_all(0)
        if data:  # else the submitter gave it no order
            worker_process.run_message(data.decode())
        return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except Exception:  # in the worker's log (its stderr by now)
        traceback.print_exc()
        return 1


def _end_worker(status: int) -> NoReturn:
    """End the worker as a Python program ends (its threads joined, its atexit functions run,
    its output flushed), but without the interpreter's finalization, as multiprocessing's
    forked children end: freeing every object writes to, and so copies, each page the worker
    shares with the fork server, about a fifth of a no-op job's CPU."""
    try:
        threading._shutdown()  # type: ignore[attr-defined] # what sys.exit would wait for
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(status)


def _read_all(descriptor: int) -> bytes:
    chunks = []
    while chunk := os.read(descriptor, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] != 0:
            pass


if __name__ == "__main__":
    main()
