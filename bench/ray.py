"""A job's start with its hosts on Ray: from CreateTrainingJob to every host's code running, for
N = 1, 2 and 4 hosts, with the local executor and with OPENMAKER_EXECUTOR=ray on a local
cluster (`ray.cluster_utils.Cluster`, one node per host, on loopback addresses) on the same
machine. Each host's code says when it started; the figure is the last of them. One job of
N = 4 hosts runs first for each, untimed (each node's agent starts once, at the first job placed
there).
Workers are forked by a fork server, as `openmaker server` does; Ray is measured twice, with the
fork server loading it ahead (as the server does) and without (each worker loads it).
Target: Ray adds under 1 s for N = 2."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.stats import Timings
from openmaker.jobs.executor import stop_fork_server, use_fork_server
from openmaker.resources import KINDS
from openmaker.training.service import TrainingJobs
from tests.helpers import log_text, make_image, request, wait_for

TARGET_SECONDS = 1.0
COUNTS = (1, 2, 4)
TYPE = "ml.m5.large"
STARTED = '#!/bin/sh\necho "started $(hostname) $(date +%s.%N)"\n'
TIMEOUT_SECONDS = 300.0
# How a job's worker is started: (the name shown, the executor, what its fork server loaded).
WAYS = (
    ("local", "local", "local"),
    ("Ray (Ray loaded by each worker)", "ray", "local"),
    ("Ray", "ray", "ray"),
)


def run(quick: bool, scratch: Path) -> list[str]:
    import ray

    counts = (1, 2) if quick else COUNTS
    runs = 2 if quick else 5
    image = make_image(scratch / "ray-image", STARTED)
    print(f"request → every host's code running, N = {counts}, {runs} runs", flush=True)
    seconds: dict[tuple[str, int], Timings] = {}
    for way, executor, ahead in WAYS:
        with _executor(executor, max(counts)), _fork_server(ahead):
            # Every node's agent made, as a server's cluster has them after its first jobs.
            _start(image, max(counts), f"bench-{ahead}-{executor}-warm")
            for count in counts:
                names = [f"bench-{ahead}-{executor}-{count}-{i}" for i in range(runs)]
                seconds[way, count] = Timings([_start(image, count, name) for name in names])
                print(f"  {way} N={count}: {seconds[way, count].describe()}", flush=True)
        ray.shutdown()
    lines = []
    for count in counts:
        local = seconds["local", count]
        for way, _, _ in WAYS[1:]:
            on_ray = seconds[way, count]
            added = on_ray.median - local.median
            verdict = ""
            if count == 2:
                met = "ok" if added < TARGET_SECONDS else "MISSED"
                verdict = f" (target < {TARGET_SECONDS:g} s: {met})"
            lines += [
                f"request → {count} host(s) running: local {local.median:.2f} s, {way} "
                f"{on_ray.median:.2f} s, adds {added:.2f} s{verdict}",
                f"  {way} {on_ray.describe()}",
            ]
        lines.append(f"  local {local.describe()}")
    return lines


@contextlib.contextmanager
def _fork_server(executor: str) -> Iterator[None]:
    """Workers forked from a fork server that loaded what `executor` needs ahead."""
    stop_fork_server()
    use_fork_server(sorted({kind.runner for kind in KINDS}), executor)
    try:
        yield
    finally:
        stop_fork_server()


@contextlib.contextmanager
def _executor(name: str, nodes: int) -> Iterator[None]:
    """The environment the jobs' workers read: the local executor, or a fresh local cluster
    with `nodes` nodes of the type."""
    saved = {k: os.environ.get(k) for k in ("OPENMAKER_EXECUTOR", "RAY_ADDRESS")}
    cluster: Any = None
    try:
        os.environ["OPENMAKER_EXECUTOR"] = name
        if name == "ray":
            from ray.cluster_utils import Cluster

            cluster = Cluster(
                initialize_head=True,
                head_node_args={
                    "node_ip_address": "127.0.0.10",
                    "include_dashboard": False,
                    "num_cpus": 1,
                },
            )
            for index in range(nodes):
                cluster.add_node(
                    node_ip_address=f"127.0.0.{11 + index}", resources={TYPE: 1}, num_cpus=1
                )
            cluster.wait_for_nodes()
            os.environ["RAY_ADDRESS"] = cluster.address
        yield
    finally:
        if cluster is not None:
            cluster.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _start(image: Path, count: int, name: str) -> float:
    """Seconds from the request to the last host's code starting."""
    jobs = TrainingJobs()
    body = request(name, str(image), "s3://bench/output")
    body["ResourceConfig"] = {"InstanceType": TYPE, "InstanceCount": count, "VolumeSizeInGB": 1}
    began = time.time()
    jobs.create(body)
    description = wait_for(jobs, name, timeout=TIMEOUT_SECONDS)
    if description["TrainingJobStatus"] != "Completed":
        raise RuntimeError(f"{name}: {description.get('FailureReason')}")
    started = [
        float(line.split()[2])
        for line in log_text(jobs, name).splitlines()
        if line.startswith("started ")
    ]
    if len(started) != count:
        raise RuntimeError(f"{name}: {len(started)} of {count} hosts said they started")
    return max(started) - began
