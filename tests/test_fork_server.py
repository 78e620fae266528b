"""The fork server (openmaker/jobs/forkserver.py): a worker forked from it is a process of its
own, in a session of its own, holding nothing of its submitter's (no descriptor but its order's
pipe and the null device, no setting or key in its environment); without an order it ends; a
module outside openmaker is refused as a runner; given its submitter's database, it compiles
what workers ask first and keeps no file of it open. Jobs created at once from many threads (as
through the server) each get a worker by the time every create has returned."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import select

from openmaker.jobs.db import TrainingJob, engine_for, warm
from openmaker.jobs.executor import ForkServer, process_lost, stop_fork_server, use_fork_server
from openmaker.settings import load_settings
from openmaker.training.service import TrainingJobs
from openmaker.training.state import TERMINAL
from tests.helpers import make_image, request, stop_and_wait, wait_for
from tests.process_helpers import wait_until

RUNNER = "openmaker.training.worker"


@pytest.fixture
def fork_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ForkServer]:
    # What a submitter holds and a worker must not: a key in its environment.
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "the-submitter-s-secret")
    monkeypatch.setenv("OPENMAKER_HOME", "/nowhere")
    server = ForkServer([RUNNER])
    try:
        yield server
    finally:
        server.close()


def _descriptors(pid: int) -> set[str]:
    try:
        return set(os.listdir(f"/proc/{pid}/fd"))
    except FileNotFoundError:
        return set()


def test_a_forked_worker_holds_nothing_of_its_submitter(fork_server: ForkServer) -> None:
    # A listening socket of the submitter's (the server's API) when the worker is forked.
    with socket.create_server(("127.0.0.1", 0)):
        pid, order = fork_server.fork(RUNNER)
        try:
            # Its own descriptors once it waits for its order: the pipe (0), the null device.
            wait_until(lambda: _descriptors(pid) == {"0", "1", "2"}, "the worker to close the rest")
            assert os.readlink(f"/proc/{pid}/fd/0").startswith("pipe:")
            assert os.getsid(pid) == pid  # a job goes on when its submitter is interrupted
            with open(f"/proc/{pid}/environ", "rb") as environ:
                names = {entry.split(b"=", 1)[0] for entry in environ.read().split(b"\0")}
            assert not {b"AWS_SECRET_ACCESS_KEY", b"OPENMAKER_HOME"} & names
        finally:
            order.close()  # no order: the worker ends
    wait_until(lambda: process_lost(pid), "the worker without an order to end")


def test_the_fork_server_runs_only_openmakers_own_runners(fork_server: ForkServer) -> None:
    with pytest.raises(RuntimeError, match=r"not a runner of openmaker's: json\.tool"):
        fork_server.fork("json.tool")
    pid, order = fork_server.fork(RUNNER)  # it goes on serving
    order.close()
    wait_until(lambda: process_lost(pid), "the worker without an order to end")


def test_creates_at_once_each_get_a_worker(home: Path, tmp_path: Path) -> None:
    """A create that finds another thread starting jobs leaves its job to that thread, which
    starts it before it lets go: once every create has returned, no job waits for a start."""
    use_fork_server([RUNNER])
    jobs = TrainingJobs()
    image = make_image(tmp_path / "image", "#!/bin/sh\nexit 0\n")
    names = [f"at-once-{index}" for index in range(6)]
    try:
        with ThreadPoolExecutor(len(names)) as pool:
            list(pool.map(lambda name: jobs.create(request(name, str(image), "s3://b/out")), names))
        with jobs.sessions() as session:
            rows = session.scalars(select(TrainingJob).where(TrainingJob.name.in_(names))).all()
        assert sorted(row.name for row in rows) == names
        assert [row.name for row in rows if row.worker is None and row.status not in TERMINAL] == []
        for name in names:
            assert wait_for(jobs, name)["TrainingJobStatus"] == "Completed"
    finally:
        stop_and_wait(jobs, names)
        stop_fork_server()


def test_a_fork_server_given_the_database_keeps_no_file_of_it_open(home: Path) -> None:
    settings = load_settings()
    TrainingJobs(settings)  # the submitter makes the database before its first job
    database = (settings.database_url, settings.db_busy_seconds)
    # What it does at its first request, here: statements compiled, connections closed.
    warm(*database)
    engine = engine_for(*database)
    assert engine._compiled_cache  # a job's row by its name, compiled
    server = ForkServer([RUNNER], database=database)
    try:
        pid, order = server.fork(RUNNER)
        order.close()
        wait_until(lambda: process_lost(pid), "the worker without an order to end")
        fork_server = server._process.pid
        opened = {os.readlink(f"/proc/{fork_server}/fd/{fd}") for fd in _descriptors(fork_server)}
        assert not [path for path in opened if path.startswith(str(settings.home))]
    finally:
        server.close()
