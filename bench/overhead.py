"""The overhead of a no-op training job: CreateTrainingJob → `Completed`, model.tar.gz uploaded."""

from __future__ import annotations

import itertools
import secrets
import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import obstore

from bench.stats import Timings
from openmaker.config import load_settings
from openmaker.jobs.service import TrainingJobs
from openmaker.store import resolve
from tests.helpers import make_image, request, wait_for

TARGET_SECONDS = 1.0
POLL_SECONDS = 0.01
JOB_TIMEOUT_SECONDS = 60.0
# The phases of a job, each named by the secondary status it ends with; "seen" is the caller
# noticing `Completed` through describe (poll interval and describe cost).
PHASES = (
    ("create → Downloading", "Downloading"),
    ("Downloading → Training", "Training"),
    ("Training → Uploading", "Uploading"),
    ("Uploading → Completed", "Completed"),
)


@dataclass(frozen=True)
class JobRun:
    seconds: float
    # Seconds spent in each phase of PHASES, then the time to see `Completed`.
    phases: list[float]


@dataclass(frozen=True)
class OverheadResult:
    # How the worker started: "cold" (a new process per job, as the CLI does) or "warm".
    kind: str
    runs: list[JobRun]

    @property
    def timings(self) -> Timings:
        return Timings([r.seconds for r in self.runs])

    def summary(self) -> str:
        verdict = "ok" if self.timings.median < TARGET_SECONDS else "MISSED"
        t = self.timings
        return (
            f"no-op job overhead, {self.kind}: median {t.median:.2f} s "
            f"(min {t.best:.2f}, max {t.worst:.2f}, n={len(self.runs)}; "
            f"target < {TARGET_SECONDS:.0f} s: {verdict})"
        )

    def breakdown(self) -> list[str]:
        names = [name for name, _ in PHASES] + ["Completed seen by describe"]
        lines = ["  median breakdown (from SecondaryStatusTransitions StartTimes):"]
        for index, name in enumerate(names):
            value = statistics.median(r.phases[index] for r in self.runs)
            lines.append(f"    {name:<28} {value:.3f} s")
        return lines


def check_completed(description: dict[str, Any]) -> None:
    """The job must really have completed and its model archive must exist on the server."""
    if description["TrainingJobStatus"] != "Completed":
        reason = description.get("FailureReason", "no reason given")
        raise RuntimeError(
            f"{description['TrainingJobName']}: {description['SecondaryStatus']}: {reason}"
        )
    uri = description["ModelArtifacts"]["S3ModelArtifacts"]
    location = resolve(uri, load_settings())
    obstore.head(location.store, location.key)  # raises FileNotFoundError when missing


def phase_seconds(description: dict[str, Any], started: datetime, seen: datetime) -> list[float]:
    starts = {t["Status"]: t["StartTime"] for t in description["SecondaryStatusTransitions"]}
    marks = [started] + [starts[status] for _, status in PHASES] + [seen]
    return [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(marks)]


def run_once(jobs: TrainingJobs, image: Path, output: str) -> JobRun:
    name = f"bench-noop-{secrets.token_hex(4)}"
    started, clock = datetime.now(UTC), time.perf_counter()
    jobs.create(request(name, str(image), output))
    description = wait_for(jobs, name, JOB_TIMEOUT_SECONDS, POLL_SECONDS)
    seconds = time.perf_counter() - clock
    seen = datetime.now(UTC)
    check_completed(description)
    return JobRun(seconds, phase_seconds(description, started, seen))


def measure(scratch: Path, output: str, runs: int) -> list[OverheadResult]:
    """`runs` no-op jobs with a cold worker each, then `runs` with a warm one; OPENMAKER_HOME
    and the S3 variables must be set."""
    image = make_image(scratch / "noop-image", "#!/bin/sh\nexit 0\n")
    # A new service per job: its executor has no worker started ahead, as in a CLI command.
    cold = [
        _timed(TrainingJobs(load_settings()), image, output, "cold", i, runs) for i in range(runs)
    ]
    # One service for all: after its second job the executor keeps a worker started ahead,
    # as a long-lived submitter (the API server) does. The first two jobs warm it up.
    jobs = TrainingJobs(load_settings())
    for _ in range(2):
        run_once(jobs, image, output)
    warm = [_timed(jobs, image, output, "warm", i, runs) for i in range(runs)]
    return [
        OverheadResult("cold worker (a CLI command)", cold),
        OverheadResult("warm worker (a long-lived submitter)", warm),
    ]


def _timed(
    jobs: TrainingJobs, image: Path, output: str, kind: str, index: int, runs: int
) -> JobRun:
    run = run_once(jobs, image, output)
    print(f"  no-op job, {kind} worker, {index + 1}/{runs}: {run.seconds:.3f} s", flush=True)
    return run
