"""A job's output cannot exhaust the worker's memory or the database, nor outlast its limits;
log searches stay quick however large the stream (issue 10, findings 5, 10 and 11)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from sqlalchemy import cast, func, select
from sqlalchemy.types import LargeBinary

from openmaker.jobs.db import LogEvent, LogStream, TrainingJob
from openmaker.jobs.logs import EVENT_OVERHEAD, LOG_GROUP
from openmaker.settings import Settings, load_settings
from openmaker.training.host.events import LogLines
from openmaker.training.recorder import TrainingRecorder
from openmaker.training.service import TrainingJobs
from openmaker.training.state import TERMINAL
from tests.apiserver import ApiServer
from tests.helpers import make_image, request
from tests.process_helpers import pid_of

MIB = 1024 * 1024
# Short lines, about 1 MiB of them per write; MIBS None floods until the job is stopped.
FLOOD = """#!{python}
import itertools, os, signal, sys
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
block = (b"x" * 99 + b"\\n") * 10486
out = sys.stdout.buffer
out.write(b"flood starts\\n")
for _ in itertools.count() if {mibs} is None else range({mibs}):
    out.write(block)
out.flush()
"""
# What the worker may hold at most while a job floods its log (it idles at about 100 MB).
RSS_LIMIT = 300 * MIB
# A job that should end and has not by then hangs: a deadline for liveness, not a measure of speed.
LIVENESS_SECONDS = 120
# Beyond this the worker is killed at once: the test has failed, and must not take the machine.
RSS_ABORT = 1500 * MIB


def _flood(mibs: int | None) -> str:
    return FLOOD.format(python=sys.executable, mibs=mibs)


def _start(tmp_path: Path, name: str, script: str, **extra: Any) -> TrainingJobs:
    jobs = TrainingJobs()
    jobs.create(request(name, str(make_image(tmp_path / "image", script)), "s3://b/out", **extra))
    return jobs


def _worker_pid(jobs: TrainingJobs, name: str) -> int | None:
    with jobs.sessions() as session:
        job = session.get(TrainingJob, name)
        return pid_of(job)


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class _Watch:
    """Samples the worker's resident memory every 20 ms until the job ends."""

    def __init__(self, jobs: TrainingJobs, name: str) -> None:
        self.jobs, self.name = jobs, name
        self.peak = 0
        self.aborted = False
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        pid = None
        while not self.done.is_set():
            pid = pid or _worker_pid(self.jobs, self.name)
            if pid is not None:
                rss = _rss(pid)
                self.peak = max(self.peak, rss)
                if rss > RSS_ABORT:
                    self.aborted = True
                    os.kill(pid, signal.SIGKILL)
                    return
            time.sleep(0.02)

    def wait(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and not self.aborted:
                description = self.jobs.describe(self.name)
                if description["TrainingJobStatus"] in TERMINAL:
                    return description
                time.sleep(0.1)
        finally:
            self.done.set()
            self.thread.join()
        if self.aborted:
            raise AssertionError(f"the worker grew past {RSS_ABORT // MIB} MiB: killed")
        pid = _worker_pid(self.jobs, self.name)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        raise AssertionError(f"job {self.name} did not end in {timeout} s")


def _stored(jobs: TrainingJobs, name: str) -> tuple[int, int, list[str]]:
    """(events, their volume as counted towards the limit, the last three messages) of a job,
    from the database."""
    rows = LogEvent.stream_id.in_(select(LogStream.id).where(LogStream.job_name == name))
    size = func.coalesce(func.sum(func.length(cast(LogEvent.message, LargeBinary))), 0)
    with jobs.sessions() as session:
        count, volume = session.execute(select(func.count(), size).where(rows)).one()
        newest = select(LogEvent.message).where(rows).order_by(LogEvent.id.desc()).limit(3)
        last = list(session.scalars(newest))
    return count, volume + EVENT_OVERHEAD * count, last[::-1]


def _marker(limit_mb: float) -> str:
    return (
        f"openmaker: this job's logs reached their limit of {limit_mb:g} MB "
        "(OPENMAKER_LOG_LIMIT_MB); what the job prints from here on is dropped, not stored"
    )


def test_a_flood_of_short_lines_keeps_the_worker_small_and_stops_at_the_log_limit(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 1 GiB of 100-byte lines; the first 32 MiB are stored (the database takes them at about
    # 20 MB/s here), the rest is read and dropped. Measured here: 4 to 15 s (as loaded), peak
    # RSS about 80 MiB.
    monkeypatch.setenv("OPENMAKER_LOG_LIMIT_MB", "32")
    jobs = _start(tmp_path, "flood", _flood(1024))
    began = time.monotonic()
    watch = _Watch(jobs, "flood")
    description = watch.wait(timeout=300)
    took = time.monotonic() - began
    print(f"1 GiB flood: {took:.1f} s, worker peak RSS {watch.peak / MIB:.0f} MiB")
    assert watch.peak > 0, "the worker's memory was never sampled"
    assert watch.peak < RSS_LIMIT
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    _, size, last = _stored(jobs, "flood")
    marker = _marker(32)
    assert size <= 32 * MIB + len(marker) + EVENT_OVERHEAD
    assert size > 31 * MIB  # the limit, not a smaller figure, held it
    assert last[-1] == marker
    assert last[-2] == "x" * 99


def test_one_huge_line_is_cut_into_events_and_capped(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENMAKER_LOG_LIMIT_MB", "5")
    script = f"#!{sys.executable}\nimport sys\nsys.stdout.buffer.write(b'y' * (64 << 20))\n"
    jobs = _start(tmp_path, "huge-line", script)
    description = _Watch(jobs, "huge-line").wait(timeout=120)
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    count, size, last = _stored(jobs, "huge-line")
    marker = _marker(5)
    assert size <= 5 * MIB + len(marker) + EVENT_OVERHEAD
    # As many 256 KiB pieces as fit, then the marker.
    assert count == 5 * MIB // (256 * 1024 + EVENT_OVERHEAD) + 1
    assert last[-1] == marker
    assert last[-2] == "y" * 256 * 1024


def test_max_runtime_ends_a_flooding_job(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The default log limit (1 GiB): the job's lines are stored as fast as the database takes
    # them, and the code waits for that.
    monkeypatch.setenv("OPENMAKER_STOP_GRACE_SECONDS", "5")
    jobs = _start(
        tmp_path, "flood-limit", _flood(None), StoppingCondition={"MaxRuntimeInSeconds": 5}
    )
    watch = _Watch(jobs, "flood-limit")
    # Liveness, not speed: the flood never ends by itself, so the job ends (within a deadline
    # far beyond the README's "within seconds", for loaded machines) only if the limit acts.
    description = watch.wait(timeout=LIVENESS_SECONDS)
    assert description["TrainingJobStatus"] == "Stopped"
    assert description["SecondaryStatus"] == "MaxRuntimeExceeded"
    assert watch.peak < RSS_LIMIT
    count, _, _ = _stored(jobs, "flood-limit")
    assert count > 1000  # it did flood


def test_a_stop_during_a_flood_ends_the_job_stopped(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENMAKER_STOP_GRACE_SECONDS", "5")
    jobs = _start(tmp_path, "flood-stop", _flood(None))
    watch = _Watch(jobs, "flood-stop")
    deadline = time.monotonic() + 60
    # Well into the flood, where a backlog builds up if it can.
    while _stored(jobs, "flood-stop")[0] < 30_000:
        assert time.monotonic() < deadline, "the job never flooded"
        time.sleep(0.1)
    jobs.stop("flood-stop")
    # Liveness, as above: the job ends rather than draining a backlog or flooding on.
    description = watch.wait(timeout=LIVENESS_SECONDS)
    assert description["TrainingJobStatus"] == "Stopped"
    assert watch.peak < RSS_LIMIT


def test_the_log_limit_counts_every_host_and_every_attempt(home: Path) -> None:
    """The hosts of a job share its limit, and a restarted job's new worker (a new recorder)
    goes on from what its earlier attempts stored."""
    line, event = "z" * 100, 100 + EVENT_OVERHEAD
    settings = replace(load_settings(), log_limit_bytes=100 * event)
    jobs = TrainingJobs()
    first = TrainingRecorder(settings, "shared-limit")
    for host in ("algo-1", "algo-2"):
        first.emit(LogLines(host, 1000, [line] * 30, 30 * 101))
    first.close()
    second = TrainingRecorder(settings, "shared-limit")
    for host in ("algo-1", "algo-2", "algo-1"):
        second.emit(LogLines(host, 2000, [line] * 30, 30 * 101))
    second.close()
    count, volume, last = _stored(jobs, "shared-limit")
    assert count == 100 + 1  # 60 lines, 40 more, then the marker
    assert last[-2:] == [line, _marker(settings.log_limit_bytes / MIB)]
    assert volume <= settings.log_limit_bytes + len(last[-1]) + EVENT_OVERHEAD


# FilterLogEvents over one large stream, written through the recorder as a job's host writes.
LINES = 500_000
NEEDLE_EVERY = 5_000


@pytest.fixture(scope="module")
def large_stream(api_server: ApiServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A finished job of the server with a second stream of LINES lines; yields the job name."""
    name = f"logs-large-{uuid.uuid4().hex[:8]}"
    image = make_image(tmp_path_factory.mktemp("image"), "#!/bin/sh\necho hello\n")
    sagemaker = api_server.client("sagemaker")
    sagemaker.create_training_job(**request(name, str(image), f"s3://b-{name}/out"))
    deadline = time.monotonic() + 60
    while (
        sagemaker.describe_training_job(TrainingJobName=name)["TrainingJobStatus"] not in TERMINAL
    ):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    recorder = TrainingRecorder(Settings(api_server.home, "us-east-1", "000000000000"), name)
    now = int(time.time() * 1000)
    for start in range(0, LINES, 10_000):
        lines = [
            f"needle {i}" if i % NEEDLE_EVERY == 0 else f"step {i} of a long and dull run"
            for i in range(start, start + 10_000)
        ]
        recorder.emit(LogLines("algo-2", now, lines, sum(map(len, lines))))
    recorder.close()
    yield name


def test_filter_log_events_scans_a_bounded_amount_per_call(
    api_server: ApiServer, large_stream: str
) -> None:
    logs = api_server.client("logs")
    found = logs.filter_log_events(
        logGroupName=LOG_GROUP, logStreamNamePrefix=f"{large_stream}/", filterPattern="absent"
    )
    # The call stopped at its bound (100,000 events), short of the stream's end: the bound, not
    # the clock, is what keeps a call quick.
    assert found["events"] == []
    assert "nextToken" in found  # nothing found yet, more to search

    expected = ["hello"] + [f"needle {i}" for i in range(0, LINES, NEEDLE_EVERY)]
    pages = logs.get_paginator("filter_log_events").paginate(
        logGroupName=LOG_GROUP,
        logStreamNamePrefix=f"{large_stream}/",
        filterPattern="?needle ?hello",
    )
    seen = [e["message"] for page in pages for e in page["events"]]
    assert seen == expected
    # Pages of at most 7 events: a page that fills up ends within a step of the scan.
    pages = logs.get_paginator("filter_log_events").paginate(
        logGroupName=LOG_GROUP,
        logStreamNamePrefix=f"{large_stream}/",
        filterPattern="needle",
        PaginationConfig={"PageSize": 7},
    )
    assert [e["message"] for page in pages for e in page["events"]] == expected[1:]

    # The aws CLI follows nextToken itself and prints every event once.
    env = {**os.environ, **api_server.env}
    aws = Path(sys.executable).parent / "aws"
    printed = subprocess.run(
        [
            str(aws),
            "logs",
            "filter-log-events",
            "--log-group-name",
            LOG_GROUP,
            "--log-stream-names",
            f"{large_stream}/algo-2-{_second_stream_start(api_server, large_stream)}",
            "--filter-pattern",
            "needle",
            "--output",
            "json",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert [e["message"] for e in json.loads(printed.stdout)["events"]] == expected[1:]


def _second_stream_start(api_server: ApiServer, job: str) -> str:
    streams = api_server.client("logs").describe_log_streams(
        logGroupName=LOG_GROUP, logStreamNamePrefix=f"{job}/algo-2-"
    )["logStreams"]
    return streams[0]["logStreamName"].rsplit("-", 1)[1]


@pytest.mark.parametrize(
    ("operation", "token"),
    [
        ("get_log_events", "f/99999999999999999999999"),
        ("get_log_events", "b/99999999999999999999"),
        ("get_log_events", "f/9223372036854775808"),
        ("get_log_events", "f/-1"),
        ("get_log_events", "f/\u0661\u0662"),
        ("get_log_events", "f/"),
        ("get_log_events", "nonsense"),
        ("filter_log_events", "s/99999999999999999999999"),
        ("filter_log_events", "1700000000000/99999999999999999999999"),
        ("describe_log_streams", "o/99999999999999999999999"),
    ],
)
def test_malformed_tokens_are_invalid_parameter(
    api_server: ApiServer, large_stream: str, operation: str, token: str
) -> None:
    logs = api_server.client("logs")
    stream = f"{large_stream}/algo-2-{_second_stream_start(api_server, large_stream)}"
    arguments: dict[str, Any] = {"logGroupName": LOG_GROUP, "nextToken": token}
    if operation == "get_log_events":
        arguments["logStreamName"] = stream
    elif operation == "filter_log_events":
        arguments["logStreamNames"] = [stream]
    with pytest.raises(ClientError) as refused:
        getattr(logs, operation)(**arguments)
    error = refused.value.response
    assert error["Error"]["Code"] == "InvalidParameterException", error
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
