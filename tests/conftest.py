from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.apiserver import ApiServer, running_api_server
from tests.egress import Egress
from tests.helpers import end_every_job, kill_every_worker
from tests.s3server import S3Server, running_s3_server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with running_s3_server(tmp_path_factory.mktemp("s3root")) as server:
        yield server


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh OPENMAKER_HOME, no S3 endpoint unless a test asks for one, and no server (the
    CLI then runs jobs in its own process). Every job still running at the end is stopped:
    a test that fails midway leaves none looping."""
    path = tmp_path / "home"
    monkeypatch.setenv("OPENMAKER_HOME", str(path))
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_SAGEMAKER"):
        monkeypatch.delenv(name, raising=False)
    yield path
    if (path / "openmaker.db").exists():
        end_every_job()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """Point openmaker and AWS clients at the test S3 server."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture(scope="session")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """One `openmaker server` for the session, over its own home and embedded store."""
    home = tmp_path_factory.mktemp("api") / "home"
    # Every test's images and data are under the session's temporary folder.
    roots = str(tmp_path_factory.getbasetemp())
    with running_api_server(home, OPENMAKER_FILE_ROOTS=roots) as server:
        yield server
    # Workers outlive their server by design (endpoints' among them): not the test session.
    kill_every_worker(home)


@pytest.fixture
def no_egress(tmp_path: Path) -> Iterator[Egress]:
    """Fail the test if it, or a client it runs through `no_egress.command(...)`, reaches (or
    looks up) any address but this machine's loopback; see tests/egress.py."""
    guard = Egress(tmp_path / "egress-report.txt")
    with guard.armed():
        yield guard
    if guard.violations():
        pytest.fail("a client reached beyond this machine:\n" + "\n".join(guard.violations()))
