"""A no-op training job, two ways: what a user of the CLI waits for (`openmaker train --request
… --wait`, from the command's start to its exit: Python's and the CLI's start, its set-up, a
cold worker, the job, the report), and the overhead a long-lived submitter sees
(CreateTrainingJob → `Completed` seen, a warm worker); model.tar.gz uploaded in both."""

from __future__ import annotations

import itertools
import json
import os
import resource
import secrets
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import obstore

from bench.stats import Timings
from openmaker.settings import load_settings
from openmaker.store import resolve
from openmaker.training.service import TrainingJobs
from tests.helpers import make_image, request, wait_for

TARGET_SECONDS = 1.0
POLL_SECONDS = 0.01
JOB_TIMEOUT_SECONDS = 60.0
# The phases of a job, each named by the secondary status it ends with.
PHASES = (
    ("create → Downloading", "Downloading"),
    ("Downloading → Training", "Training"),
    ("Training → Uploading", "Uploading"),
    ("Uploading → Completed", "Completed"),
)
# Before and after them: in process, the caller noticing `Completed` through describe (poll
# interval and describe cost); through the CLI, its start and set-up until the job is created,
# and its report and exit.
IN_PROCESS_PHASES = (*(name for name, _ in PHASES), "Completed seen by describe")
CLI_PHASES = (
    "CLI start, set-up → created",
    *(name for name, _ in PHASES),
    "Completed → CLI exited",
)


@dataclass(frozen=True)
class JobRun:
    seconds: float
    # Seconds spent in each phase of the result's `phases`.
    phases: list[float]
    # Through the CLI: the command's CPU seconds (user and system).
    cpu: float | None = None


@dataclass(frozen=True)
class OverheadResult:
    what: str  # the figure's name: what is measured, from where to where
    phases: tuple[str, ...]
    runs: list[JobRun]
    # Whether the 1 s target applies (the job's overhead); a CLI run also starts Python.
    target: float | None

    @property
    def timings(self) -> Timings:
        return Timings([r.seconds for r in self.runs])

    def summary(self) -> str:
        t = self.timings
        verdict = ""
        if self.target is not None:
            ok = "ok" if t.median < self.target else "MISSED"
            verdict = f"; target < {self.target:.0f} s: {ok}"
        cpu = [r.cpu for r in self.runs if r.cpu is not None]
        return (
            f"{self.what}: median {t.median:.2f} s "
            f"(min {t.best:.2f}, max {t.worst:.2f}, n={len(self.runs)}{verdict})"
        ) + (f"\n  the command's CPU: {Timings(cpu).describe()}" if cpu else "")

    def breakdown(self) -> list[str]:
        lines = ["  median breakdown (from SecondaryStatusTransitions StartTimes):"]
        for index, name in enumerate(self.phases):
            value = statistics.median(r.phases[index] for r in self.runs)
            lines.append(f"    {name:<30} {value:.3f} s")
        return lines


def check_completed(description: dict[str, Any]) -> None:
    """The job must really have completed and its model archive must exist on the server."""
    if description["TrainingJobStatus"] != "Completed":
        reason = description.get("FailureReason", "no reason given")
        raise RuntimeError(
            f"{description['TrainingJobName']}: {description['SecondaryStatus']}: {reason}"
        )
    uri = description["ModelArtifacts"]["S3ModelArtifacts"]
    location = resolve(uri, load_settings().store)
    obstore.head(location.store, location.key)  # raises FileNotFoundError when missing


def phase_seconds(description: dict[str, Any], *marks: datetime) -> list[float]:
    """The seconds between `marks[:-1]` (the first is when the job was asked for), the job's
    phases, and `marks[-1]`."""
    starts = {t["Status"]: t["StartTime"] for t in description["SecondaryStatusTransitions"]}
    times = [*marks[:-1], *(starts[status] for _, status in PHASES), marks[-1]]
    return [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(times)]


def run_once(jobs: TrainingJobs, image: Path, output: str) -> JobRun:
    name = f"bench-noop-{secrets.token_hex(4)}"
    started, clock = datetime.now(UTC), time.perf_counter()
    jobs.create(request(name, str(image), output))
    description = wait_for(jobs, name, JOB_TIMEOUT_SECONDS, POLL_SECONDS)
    seconds = time.perf_counter() - clock
    seen = datetime.now(UTC)
    check_completed(description)
    return JobRun(seconds, phase_seconds(description, started, seen))


def run_cli_once(jobs: TrainingJobs, image: Path, output: str, folder: Path) -> JobRun:
    """`openmaker train --request … --wait` in a new process, as a user types it; timed from
    before the command starts to its exit. `jobs` (the same home) reads the job afterwards."""
    name = f"bench-cli-{secrets.token_hex(4)}"
    request_file = folder / f"{name}.json"
    request_file.write_text(json.dumps(request(name, str(image), output)))
    # In the CLI's own process (no server), as on a machine without `openmaker server`.
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL_SAGEMAKER"}
    command = [str(Path(sys.executable).parent / "openmaker"), "train", "--request"]
    started, clock = datetime.now(UTC), time.perf_counter()
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [*command, str(request_file), "--wait"], env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - clock
    # The job's worker is no child this process waits for: the CLI's own CPU.
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - used.ru_utime + after.ru_stime - used.ru_stime
    exited = datetime.now(UTC)
    if done.returncode != 0:
        raise RuntimeError(f"openmaker train failed ({done.returncode}): {done.stderr[-2000:]}")
    description = jobs.describe(name)
    check_completed(description)
    created = description["CreationTime"]
    return JobRun(seconds, phase_seconds(description, started, created, exited), cpu)


def measure(scratch: Path, output: str, runs: int) -> list[OverheadResult]:
    """`runs` no-op jobs through the CLI, then `runs` with a warm worker in this process;
    OPENMAKER_HOME and the S3 variables must be set."""
    image = make_image(scratch / "noop-image", "#!/bin/sh\nexit 0\n")
    jobs = TrainingJobs(load_settings())
    requests = scratch / "noop-requests"
    requests.mkdir(exist_ok=True)
    cli = []
    for index in range(runs):
        cli.append(run_cli_once(jobs, image, output, requests))
        _say("openmaker train --wait", index, runs, cli[-1])
    # A new service per job: its executor has no worker started ahead.
    cold = []
    for index in range(runs):
        cold.append(run_once(TrainingJobs(load_settings()), image, output))
        _say("cold worker", index, runs, cold[-1])
    # One service for all: after its second job the executor keeps a worker started ahead,
    # as a long-lived submitter (the API server) does. The first two jobs warm it up.
    for _ in range(2):
        run_once(jobs, image, output)
    warm = []
    for index in range(runs):
        warm.append(run_once(jobs, image, output))
        _say("warm worker", index, runs, warm[-1])
    return [
        OverheadResult(
            "no-op job, what a CLI user waits for (`openmaker train --request … --wait`, start "
            "to exit; Python and the CLI start, a cold worker)",
            CLI_PHASES, cli, None,
        ),
        OverheadResult(
            "no-op job overhead, cold worker (a new TrainingJobs in this process: "
            "CreateTrainingJob → Completed seen by DescribeTrainingJob)",
            IN_PROCESS_PHASES, cold, TARGET_SECONDS,
        ),
        OverheadResult(
            "no-op job overhead, warm worker (a long-lived submitter: CreateTrainingJob → "
            "Completed seen by DescribeTrainingJob)",
            IN_PROCESS_PHASES, warm, TARGET_SECONDS,
        ),
    ]  # fmt: skip


def _say(kind: str, index: int, runs: int, run: JobRun) -> None:
    print(f"  no-op job, {kind}, {index + 1}/{runs}: {run.seconds:.3f} s", flush=True)
