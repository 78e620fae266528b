"""The API server under load: DescribeTrainingJob requests per second through boto3, and the
first page of ListTrainingJobs over 10,000 stored jobs, each against a peer that answers the
same requests with canned bodies (bench/floor_server.py): the ratio is what the server's own
work (signature, validation, database) costs on top of boto3 and HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
from sqlalchemy import insert

from bench.stats import Timings, timed
from openmaker.jobs.db import TrainingJob, writer_sessions
from openmaker.settings import Settings
from openmaker.shapes.arn import training_job_arn
from openmaker.tools import wait_listening
from tests.apiserver import ApiServer, running_api_server, signed_post
from tests.helpers import make_image, request
from tests.s3server import free_port

STORED_JOBS = 10_000
THREADS = 4
ROUNDS = 6  # turns of each server's describes
DESCRIBE_TARGET = 0.8  # of the canned peer's rate
ACCOUNT = "000000000000"


def run(quick: bool, scratch: Path) -> list[str]:
    seconds = 2.0 if quick else 6.0
    samples = 5 if quick else 25
    print(f"API: describe for {seconds:.0f} s x2, list over {STORED_JOBS} jobs", flush=True)
    with running_api_server(scratch / "api-home") as server:
        name = _one_real_job(server, scratch)
        _store_jobs(server, name)
        canned = _canned_answers(server, name)
        with _floor(scratch, canned, server) as (floor_factory, floor_pid):
            ours = [_client_factory(server)() for _ in range(THREADS)]
            floor = [floor_factory() for _ in range(THREADS)]
            # In turns, so that a busy moment of the machine falls on both alike.
            totals = {"ours": [0, 0.0, 0.0], "floor": [0, 0.0, 0.0]}
            for _ in range(ROUNDS):
                for side, clients, pid in (
                    ("ours", ours, server.process.pid),
                    ("floor", floor, floor_pid),
                ):
                    before = _cpu_seconds(pid)
                    count, took = _describe_count(clients, name, seconds / ROUNDS)
                    totals[side][0] += count
                    totals[side][1] += took
                    totals[side][2] += _cpu_seconds(pid) - before
            ours_rps = totals["ours"][0] / totals["ours"][1]
            floor_rps = totals["floor"][0] / totals["floor"][1]
            # The server's own CPU per request: what a loaded machine blurs least.
            ours_cpu = totals["ours"][2] / totals["ours"][0]
            floor_cpu = totals["floor"][2] / totals["floor"][0]
            ours_list = _list_latency(_client_factory(server), samples)
            floor_list = _list_latency(floor_factory, samples)
    return [
        f"DescribeTrainingJob through boto3 ({THREADS} threads, {ROUNDS} turns each): "
        f"{ours_rps:.0f} requests/s; canned peer {floor_rps:.0f}/s; ratio "
        f"{ours_rps / floor_rps:.2f}; target >= {DESCRIBE_TARGET}: "
        f"{'ok' if ours_rps / floor_rps >= DESCRIBE_TARGET else 'MISSED'}",
        f"  server CPU per describe: openmaker {ours_cpu * 1000:.2f} ms, canned peer "
        f"{floor_cpu * 1000:.2f} ms (the boto3 client's own work is the rest)",
        f"ListTrainingJobs first page (100 of {STORED_JOBS + 1} jobs, newest first): "
        f"median {ours_list.median * 1000:.1f} ms; canned peer {floor_list.median * 1000:.1f} ms; "
        f"ratio {floor_list.median / ours_list.median:.2f}",
        f"  openmaker   {ours_list.describe()}",
        f"  canned peer {floor_list.describe()}",
    ]


def _one_real_job(server: ApiServer, scratch: Path) -> str:
    """A job run to its end, so that every member of its description is filled in."""
    sagemaker = server.client("sagemaker")
    server.client("s3").create_bucket(Bucket="bench-api")
    image = make_image(scratch / "api-image", "#!/bin/sh\necho hello\n")
    name = "bench-api-real"
    sagemaker.create_training_job(**request(name, str(image), "s3://bench-api/out"))
    sagemaker.get_waiter("training_job_completed_or_stopped").wait(
        TrainingJobName=name, WaiterConfig={"Delay": 1}
    )
    return name


def _store_jobs(server: ApiServer, like: str) -> None:
    """10,000 ended jobs written straight into the server's database, as if run before."""
    # The server's own settings: its home, the default region and account.
    settings = Settings(home=server.home, region=server.env["AWS_REGION"], account_id=ACCOUNT)
    with writer_sessions(settings)() as session:
        model = session.get(TrainingJob, like)
        assert model is not None
        start = datetime.now(UTC) - timedelta(days=30)
        rows: list[dict[str, Any]] = []
        for index in range(STORED_JOBS):
            name = f"stored-{index:05d}"
            at = start + timedelta(seconds=index * 60)
            rows.append(
                {
                    "name": name,
                    "arn": training_job_arn(name, settings.region, settings.account_id),
                    "request": dict(model.request, TrainingJobName=name),
                    "status": ("Completed", "Failed", "Stopped")[index % 3],
                    "secondary_status": ("Completed", "Failed", "Stopped")[index % 3],
                    "transitions": model.transitions,
                    "creation_time": at,
                    "last_modified_time": at + timedelta(seconds=30),
                    "training_start_time": at + timedelta(seconds=5),
                    "training_end_time": at + timedelta(seconds=30),
                }
            )
        session.execute(insert(TrainingJob), rows)
        session.commit()


def _canned_answers(server: ApiServer, name: str) -> dict[str, Any]:
    body = json.dumps({"TrainingJobName": name}).encode()
    _, described = signed_post(server, "SageMaker.DescribeTrainingJob", body)
    page = json.dumps({"MaxResults": 100, "SortOrder": "Descending"}).encode()
    _, listed = signed_post(server, "SageMaker.ListTrainingJobs", page)
    assert len(listed["TrainingJobSummaries"]) == 100
    return {"DescribeTrainingJob": described, "ListTrainingJobs": listed}


def _client_factory(server: ApiServer) -> Callable[[], Any]:
    return lambda: server.client("sagemaker")


def _describe_count(clients: list[Any], name: str, seconds: float) -> tuple[int, float]:
    """How many describes `clients` (one thread each) made in about `seconds`; the seconds."""
    counts = [0] * len(clients)
    for client in clients:  # connection and model warm
        client.describe_training_job(TrainingJobName=name)
    deadline = time.monotonic() + seconds

    def hammer(slot: int) -> None:
        while time.monotonic() < deadline:
            clients[slot].describe_training_job(TrainingJobName=name)
            counts[slot] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts), time.monotonic() - started


def _list_latency(make_client: Callable[[], Any], samples: int) -> Timings:
    client = make_client()
    client.list_training_jobs(MaxResults=100, SortOrder="Descending")
    seconds = []
    for _ in range(samples):
        page, took = timed(
            lambda: client.list_training_jobs(MaxResults=100, SortOrder="Descending")
        )
        assert len(page["TrainingJobSummaries"]) == 100
        seconds.append(took)
    return Timings(seconds)


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of process `pid` (its own threads, not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def _floor(scratch: Path, canned: dict[str, Any], like: ApiServer) -> Any:
    canned_file = scratch / "canned.json"
    canned_file.write_text(json.dumps(canned))
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.floor_server", str(port), str(canned_file)]
    )
    try:
        wait_listening(process, "127.0.0.1", port, "the canned peer server")
        url = f"http://127.0.0.1:{port}"
        yield (
            lambda: boto3.client(
                "sagemaker",
                endpoint_url=url,
                region_name=like.env["AWS_REGION"],
                aws_access_key_id=like.env["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=like.env["AWS_SECRET_ACCESS_KEY"],
            ),
            process.pid,
        )
    finally:
        process.terminate()
        process.wait(timeout=10)
