"""Continuous checkpoint sync: upload lag (file closed → object listed by the S3 server) and the
slowdown of a CPU-bound training loop whose checkpoints are synced.

The peer is the same loop in the same job (same sandbox, worker and data) writing the same
checkpoints into a folder nobody syncs: the job alternates segments of its loop between the
synced folder and that one (in the order S U U S S U ..., so that neither kind always comes
first), which keeps the other work of a shared machine out of the ratio far better than
separate jobs would. A synced segment's last upload may run on into the next segment: that
costs the unsynced side, so the slowdown shown is, if anything, too small by that overlap
(the lag, a small part of a segment).
"""

from __future__ import annotations

import json
import math
import secrets
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import obstore

from bench.overhead import check_completed
from openmaker.settings import load_settings
from openmaker.store import resolve
from openmaker.training.service import TrainingJobs
from tests.helpers import log_text, make_image, request, wait_for

LAG_TARGET_SECONDS = 2.0
SLOWDOWN_TARGET = 0.05
LIST_INTERVAL_SECONDS = 0.02
MiB = 1024 * 1024

# Each step is pure-Python arithmetic; every `every` steps a checkpoint of the same bytes is
# written and closed (its close time noted); each folder keeps its three newest. Prints the
# seconds of every segment by kind, and the close times of the synced checkpoints.
TRAIN = """#!{python}
import json, os, time
segments, per_segment, every, size = {segments}, {per_segment}, {every}, {size}
folders = {{"synced": "/opt/ml/checkpoints", "unsynced": "/opt/ml/unsynced"}}
os.makedirs(folders["unsynced"], exist_ok=True)
payload = bytes(range(256)) * (size // 256)
closed, seconds = {{}}, {{"synced": [], "unsynced": []}}
total, step = 0, 0
for segment in range(segments):
    kind = "synced" if segment % 4 in (0, 3) else "unsynced"
    started = time.perf_counter()
    for _ in range(per_segment * every):
        step += 1
        for i in range(20000):
            total += i * i % 7
        if step % every == 0:
            name = f"ckpt-{{step:07d}}.bin"
            with open(os.path.join(folders[kind], name), "wb") as out:
                out.write(payload)
            if kind == "synced":
                closed[name] = time.time()
            old = os.path.join(folders[kind], f"ckpt-{{step - 3 * every:07d}}.bin")
            if os.path.exists(old):
                os.remove(old)
    seconds[kind].append(time.perf_counter() - started)
print("RESULT " + json.dumps({{"seconds": seconds, "closed": closed}}), flush=True)
"""


@dataclass(frozen=True)
class CheckpointPlan:
    jobs: int
    segments: int
    per_segment: int
    every: int
    size: int


DEFAULT = CheckpointPlan(jobs=2, segments=20, per_segment=3, every=200, size=8 * MiB)
QUICK = CheckpointPlan(jobs=1, segments=8, per_segment=2, every=100, size=4 * MiB)


def _lag(seconds: float) -> str:
    return "never" if math.isinf(seconds) else f"{seconds:.3f} s"


@dataclass(frozen=True)
class CheckpointResult:
    lags: list[float]
    missing: int
    synced: list[float]
    unsynced: list[float]
    plan: CheckpointPlan

    @property
    def slowdown(self) -> float:
        """The median over blocks S U U S of synced time / unsynced time, less one: a block is
        a few seconds long, so the load of a shared machine drifts little within one."""
        return statistics.median(self.block_ratios) - 1

    @property
    def block_ratios(self) -> list[float]:
        pairs = range(0, min(len(self.synced), len(self.unsynced)) - 1, 2)
        return [sum(self.synced[i : i + 2]) / sum(self.unsynced[i : i + 2]) for i in pairs]

    @property
    def all_lags(self) -> list[float]:
        """Every synced checkpoint's lag; one no listing ever saw (deleted before it was
        uploaded, or never uploaded) counts as a miss: an endless lag."""
        return self.lags + [math.inf] * self.missing

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.all_lags)
        return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]

    def summary(self) -> list[str]:
        p50, p95 = self.percentile(0.5), self.percentile(0.95)
        quartiles = statistics.quantiles(self.block_ratios, n=4)
        lag_ok = "ok" if p95 < LAG_TARGET_SECONDS else "MISSED"
        slow_ok = "ok" if self.slowdown < SLOWDOWN_TARGET else "MISSED"
        return [
            f"checkpoint upload lag ({len(self.all_lags)} checkpoints of "
            f"{self.plan.size // MiB} MiB, {self.missing} of them never listed, counted as "
            f"misses): p50 {_lag(p50)}, p95 {_lag(p95)}, max {_lag(max(self.all_lags))} "
            f"(target p95 < {LAG_TARGET_SECONDS:.0f} s: {lag_ok})",
            f"training-loop slowdown with sync: {self.slowdown * 100:+.1f} % "
            f"(target < {SLOWDOWN_TARGET * 100:.0f} %: {slow_ok}; median of "
            f"{len(self.block_ratios)} blocks, quartiles "
            f"{(quartiles[0] - 1) * 100:+.1f} % / {(quartiles[2] - 1) * 100:+.1f} %)",
            f"  segment synced   median {statistics.median(self.synced):.3f} s "
            f"(n={len(self.synced)}, min {min(self.synced):.3f}, max {max(self.synced):.3f})",
            f"  segment unsynced median {statistics.median(self.unsynced):.3f} s "
            f"(n={len(self.unsynced)}, min {min(self.unsynced):.3f}, "
            f"max {max(self.unsynced):.3f})",
        ]


class Lister:
    """Lists a prefix every LIST_INTERVAL_SECONDS; notes when each key is first listed."""

    def __init__(self, uri: str) -> None:
        self.location = resolve(uri, load_settings().store)
        self.first_seen: dict[str, float] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.is_set():
            for batch in obstore.list(self.location.store, self.location.key):
                now = time.time()
                for meta in batch:
                    self.first_seen.setdefault(meta["path"].rsplit("/", 1)[-1], now)
            time.sleep(LIST_INTERVAL_SECONDS)

    def stop(self) -> None:
        self.done.set()
        self.thread.join()


def run_job(jobs: TrainingJobs, image: Path, bucket: str) -> dict[str, Any]:
    name = f"bench-ckpt-{secrets.token_hex(4)}"
    prefix = f"s3://{bucket}/checkpoints/{name}/"
    body = request(name, str(image), f"s3://{bucket}/output")
    body["CheckpointConfig"] = {"S3Uri": prefix}
    lister = Lister(prefix)
    try:
        jobs.create(body)
        description = wait_for(jobs, name, timeout=900, poll=0.2)
    finally:
        lister.stop()
    check_completed(description)
    line = next(x for x in log_text(jobs, name).splitlines() if x.startswith("RESULT "))
    result: dict[str, Any] = json.loads(line[len("RESULT ") :])
    seen = lister.first_seen
    result["lags"] = [seen[n] - at for n, at in result["closed"].items() if n in seen]
    result["missing"] = len(set(result["closed"]) - set(seen))
    return result


def measure(scratch: Path, bucket: str, plan: CheckpointPlan) -> CheckpointResult:
    """OPENMAKER_HOME and the S3 variables must be set (see bench/__main__.py)."""
    script = TRAIN.format(
        python=sys.executable,
        segments=plan.segments,
        per_segment=plan.per_segment,
        every=plan.every,
        size=plan.size,
    )
    image = make_image(scratch / "checkpoint-image", script)
    jobs = TrainingJobs(load_settings())
    lags: list[float] = []
    synced: list[float] = []
    unsynced: list[float] = []
    missing = 0
    for index in range(plan.jobs):
        result = run_job(jobs, image, bucket)
        lags += result["lags"]
        missing += result["missing"]
        synced += result["seconds"]["synced"]
        unsynced += result["seconds"]["unsynced"]
        s, u = (
            statistics.median(result["seconds"]["synced"]),
            statistics.median(result["seconds"]["unsynced"]),
        )
        print(f"  job {index + 1}/{plan.jobs}: segment medians synced {s:.3f} s, "
              f"unsynced {u:.3f} s; {len(result['lags'])} uploads seen", flush=True)  # fmt: skip
    return CheckpointResult(lags, missing, synced, unsynced, plan)


def run(quick: bool, scratch: Path, bucket: str) -> list[str]:
    plan = QUICK if quick else DEFAULT
    print(
        f"checkpoint sync: {plan.jobs} job(s) of {plan.segments} loop segments, a "
        f"{plan.size // MiB} MiB checkpoint every {plan.every} steps",
        flush=True,
    )
    return measure(scratch, bucket, plan).summary()
