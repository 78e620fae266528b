"""FastFile against File mode, as real training jobs on the same prefix.

Code in each job notes when it starts, when its first byte arrives and when it has read every
byte of the channel once. Measured from CreateTrainingJob: FastFile's first byte against File
mode's code start (every object downloaded by then), and the total time to the last byte.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.download import DataSet, s5cmd, upload
from bench.stats import Timings
from openmaker.training.service import TrainingJobs
from tests.helpers import get_object, make_image, request, wait_for

FIRST_BYTE_TARGET_SECONDS = 1.0
TOTAL_TARGET_RATIO = 1.1
JOB_TIMEOUT_SECONDS = 1800.0

# Reads every file of the channel once, in order, as a training loop over files would.
READ_ALL = (
    "#!"
    + sys.executable
    + """
import json, os, pathlib, time
started = time.time()
data = pathlib.Path("/opt/ml/input/data/train")
first, total = None, 0
for path in sorted(p for p in data.rglob("*") if p.is_file()):
    with open(path, "rb", buffering=0) as source:
        while chunk := source.read(8 * 1024 * 1024):
            if first is None:
                first = time.time()
            total += len(chunk)
times = {"started": started, "first": first, "last": time.time(), "bytes": total}
pathlib.Path("/opt/ml/model/times.json").write_text(json.dumps(times))
"""
)


@dataclass(frozen=True)
class FastFilePlan:
    count: int
    size: int
    runs: int


@dataclass(frozen=True)
class JobTimes:
    """Seconds from CreateTrainingJob to the code's start, first byte and last byte."""

    started: float
    first: float
    last: float


def run_job(
    jobs: TrainingJobs, image: Path, name: str, uri: str, mode: str, total: int
) -> JobTimes:
    body = request(name, str(image), "s3://bench/fastfile-out", {"train": uri})
    body["AlgorithmSpecification"]["TrainingInputMode"] = mode
    created = time.time()
    jobs.create(body)
    description = wait_for(jobs, name, timeout=JOB_TIMEOUT_SECONDS, poll=0.05)
    if description["TrainingJobStatus"] != "Completed":
        raise RuntimeError(f"{name}: {description.get('FailureReason')}")
    archive = get_object(description["ModelArtifacts"]["S3ModelArtifacts"])
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        member = tar.extractfile("times.json")
        assert member is not None
        times = json.loads(member.read())
    if times["bytes"] != total:
        raise RuntimeError(f"{name}: the code read {times['bytes']} bytes, expected {total}")
    return JobTimes(times["started"] - created, times["first"] - created, times["last"] - created)


def _warm_up(jobs: TrainingJobs, folder: Path) -> None:
    """Two no-op jobs: from the second submission on, a worker waits ready for the next job."""
    image = make_image(folder / "noop-image", "#!/bin/sh\n")
    for index in range(2):
        name = f"bench-warm-{index}-{int(time.time())}"
        jobs.create(request(name, str(image), "s3://bench/fastfile-out"))
        wait_for(jobs, name, poll=0.05)


def run(plan: FastFilePlan, scratch: Path, bucket: str, store_env: dict[str, str]) -> list[str]:
    data = DataSet(plan.count, plan.size)
    print(f"FastFile against File on {data.label} ({plan.runs} runs)", flush=True)
    folder = scratch / f"fastfile-{data.label}"
    upload(data, folder, bucket, store_env)
    # rclone serve s3 hashes every object of a prefix for the ETags of the first listing, and
    # keeps the hashes for a while: list once here, so that whichever job lists first does not
    # pay for it. The upload's dirty pages are written back now, not during the first run.
    s5cmd(store_env, "ls", f"s3://{bucket}/{data.prefix}*")
    os.sync()
    uri = f"s3://{bucket}/{data.prefix}"
    image = make_image(folder / "image", READ_ALL)
    # One submitter for every job, with a worker started ahead, as `openmaker server` has: the
    # figures are then the data's, not a cold Python start's (bench/overhead.py measures that).
    jobs = TrainingJobs()
    _warm_up(jobs, folder)
    results: dict[str, list[JobTimes]] = {"FastFile": [], "File": []}
    for index in range(plan.runs):
        order = ["FastFile", "File"] if index % 2 == 0 else ["File", "FastFile"]
        for mode in order:
            name = f"bench-{mode.lower()}-{index}-{int(time.time())}"
            results[mode].append(run_job(jobs, image, name, uri, mode, data.total))
        ff, fl = results["FastFile"][-1], results["File"][-1]
        print(
            f"  run {index + 1}/{plan.runs}: FastFile first byte {ff.first:.2f} s, last "
            f"{ff.last:.2f} s; File code start {fl.started:.2f} s, last {fl.last:.2f} s",
            flush=True,
        )
    first = Timings([t.first for t in results["FastFile"]])
    ff_start = Timings([t.started for t in results["FastFile"]])
    file_start = Timings([t.started for t in results["File"]])
    ff_total = Timings([t.last for t in results["FastFile"]])
    file_total = Timings([t.last for t in results["File"]])
    ratio = ff_total.median / file_total.median
    first_ok = "ok" if first.median < FIRST_BYTE_TARGET_SECONDS else "MISSED"
    total_ok = "ok" if ratio <= TOTAL_TARGET_RATIO else "MISSED"
    return [
        f"FastFile {data.label}: first byte {first.median:.2f} s after create, File mode starts "
        f"the code after {file_start.median:.2f} s (ratio {file_start.median / first.median:.1f}"
        f"x; target first byte < {FIRST_BYTE_TARGET_SECONDS:.0f} s: {first_ok})",
        f"FastFile {data.label}: every byte read {ff_total.median:.2f} s, File mode (download + "
        f"read) {file_total.median:.2f} s, ratio {ratio:.2f} (target <= {TOTAL_TARGET_RATIO}: "
        f"{total_ok})",
        f"  FastFile code start {ff_start.describe()} (a job's own start-up, data aside)",
        f"  FastFile first byte {first.describe()}",
        f"  FastFile last byte  {ff_total.describe()}",
        f"  File code start     {file_start.describe()}",
        f"  File last byte      {file_total.describe()}",
    ]
