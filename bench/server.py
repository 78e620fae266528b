"""Jobs through `openmaker server`, as boto3 sends them: one no-op job from CreateTrainingJob to
a terminal status seen by DescribeTrainingJob, and 50 created at once from 16 threads (how long
the creates take, and jobs/s until the last has ended, as one client listing them every 50 ms
sees it: a DescribeTrainingJob per job every 10 ms from 16 threads, as the single job is
watched, would be most of the machine's load), with the CPU time the server and every process
under it spent per job meanwhile (what bounds jobs/s on a busy machine: the other figures move
with its load). The peer is the same no-op job in this process with a warm worker
(TrainingJobs, no HTTP)."""

from __future__ import annotations

import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import cpu
from bench.overhead import run_once
from bench.stats import Timings
from openmaker.settings import load_settings
from openmaker.training.service import TrainingJobs
from tests.apiserver import ApiServer, running_api_server
from tests.helpers import make_image, request

ONE_JOB_TARGET_SECONDS = 0.5
JOBS_PER_SECOND_TARGET = 10.0
MANY_JOBS = 50
THREADS = 16
POLL_SECONDS = 0.01
LIST_POLL_SECONDS = 0.05
TERMINAL = ("Completed", "Failed", "Stopped")
# The fork server reaps its ended workers every half second (jobs/forkserver.py).
REAPED_SECONDS = 1.0
BUCKET = "bench-server"
# 1 GB, not the tests' 5: fifty volumes at once must fit a small disk's free space.
RESOURCES = {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1}


def run(quick: bool, scratch: Path, output: str) -> list[str]:
    """`output`: where the peer's jobs (this process's settings) put their models."""
    runs = 3 if quick else 7
    image = make_image(scratch / "server-noop-image", "#!/bin/sh\nexit 0\n")
    print(f"jobs through the server ({runs} single jobs, {MANY_JOBS} from {THREADS} threads)")
    with running_api_server(scratch / "server-home") as server:
        server.client("s3").create_bucket(Bucket=BUCKET)
        sagemaker = server.client("sagemaker")
        for _ in range(2):  # the server's executor keeps a worker ahead after its 2nd job
            _one_job(sagemaker, image)
        one = Timings([_one_job(sagemaker, image) for _ in range(runs)])
        pid = server.process.pid
        cpu_before, own_before = _cpu_seconds(pid), _own_cpu_seconds(pid)
        created, finished = _many_jobs(server, image)
        time.sleep(REAPED_SECONDS)  # the ended workers' time counts once they are reaped
        cpu = (_cpu_seconds(pid) - cpu_before) / MANY_JOBS
        own = (_own_cpu_seconds(pid) - own_before) / MANY_JOBS
    peer = _in_process(image, output, runs)
    rate = MANY_JOBS / finished
    one_ok = "ok" if one.median < ONE_JOB_TARGET_SECONDS else "MISSED"
    rate_ok = "ok" if rate >= JOBS_PER_SECOND_TARGET else "MISSED"
    return [
        f"one no-op job through the server (CreateTrainingJob → terminal status seen): "
        f"median {one.median:.3f} s; in-process warm peer {peer.median:.3f} s; "
        f"target < {ONE_JOB_TARGET_SECONDS} s: {one_ok}",
        f"  server {one.describe()}",
        f"  peer   {peer.describe()}",
        f"{MANY_JOBS} no-op jobs from {THREADS} threads: creates took {created:.2f} s, all "
        f"ended after {finished:.2f} s: {rate:.1f} jobs/s; "
        f"target >= {JOBS_PER_SECOND_TARGET:.0f} jobs/s: {rate_ok}",
        # Load moves it too (polls, lock waits), less than the rest: ±30% between runs here.
        f"  CPU per job (the server and every process under it) {cpu:.3f} s: the server's "
        f"own process {own:.3f} s, the rest (workers, what they start) {cpu - own:.3f} s",
    ]


def _own_cpu_seconds(pid: int) -> float:
    """CPU time of process `pid` itself (every thread of it), without its children's."""
    return cpu.seconds(pid)


def _cpu_seconds(pid: int) -> float:
    """CPU time of process `pid` and of every process under it, running or reaped."""
    times = cpu.times(pid)
    try:
        under = cpu.children(pid)
    except OSError:  # ended meanwhile: its time is its parent's now
        return 0.0
    if times is None:
        return 0.0
    return sum(times) + sum(_cpu_seconds(child) for child in under)


def _one_job(sagemaker: Any, image: Path) -> float:
    name = f"bench-one-{secrets.token_hex(4)}"
    started = time.perf_counter()
    body = request(name, str(image), f"s3://{BUCKET}/out", ResourceConfig=RESOURCES)
    sagemaker.create_training_job(**body)
    _wait_ended(sagemaker, name)
    return time.perf_counter() - started


def _wait_ended(sagemaker: Any, name: str) -> dict[str, Any]:
    while True:
        described = sagemaker.describe_training_job(TrainingJobName=name)
        if described["TrainingJobStatus"] in TERMINAL:
            if described["TrainingJobStatus"] != "Completed":
                raise RuntimeError(f"{name}: {described.get('FailureReason')}")
            return described
        time.sleep(POLL_SECONDS)


def _many_jobs(server: ApiServer, image: Path) -> tuple[float, float]:
    """(seconds until every create has returned, seconds until every job has ended)."""
    run = f"bench-many-{secrets.token_hex(3)}"
    names = [f"{run}-{index:02d}" for index in range(MANY_JOBS)]
    clients = [server.client("sagemaker") for _ in range(THREADS)]
    for client in clients:  # connections and models warm, as in a running pipeline
        client.list_training_jobs(MaxResults=1)

    def create(index: int) -> None:
        body = request(names[index], str(image), f"s3://{BUCKET}/many", ResourceConfig=RESOURCES)
        clients[index % THREADS].create_training_job(**body)

    started = time.perf_counter()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(create, range(MANY_JOBS)))
    created = time.perf_counter() - started
    while True:
        listed = clients[0].list_training_jobs(NameContains=run, MaxResults=100)
        ended = [
            job for job in listed["TrainingJobSummaries"] if job["TrainingJobStatus"] in TERMINAL
        ]
        if len(ended) == MANY_JOBS:
            break
        time.sleep(LIST_POLL_SECONDS)
    finished = time.perf_counter() - started
    if failed := [
        job["TrainingJobName"] for job in ended if job["TrainingJobStatus"] != "Completed"
    ]:
        raise RuntimeError(f"{len(failed)} jobs did not complete, {failed[0]} first")
    return created, finished


def _in_process(image: Path, output: str, runs: int) -> Timings:
    jobs = TrainingJobs(load_settings())
    try:
        for _ in range(2):  # a worker kept ahead from the second job on
            run_once(jobs, image, output)
        return Timings([run_once(jobs, image, output).seconds for _ in range(runs)])
    finally:
        jobs.close()
