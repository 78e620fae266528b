"""`python -m bench [--quick] [--only PART]` from the repository root (PART: overhead, cli,
download, local, pipe, fastfile, checkpoints, api, gate, ray, images, invoke, transform,
server)."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import (
    api,
    checkpoints,
    cli,
    download,
    fastfile,
    gate,
    images,
    invoke,
    local,
    overhead,
    pipe,
    ray,
    transform,
)
from bench import server as server_jobs
from bench.download import DataSet, KiB, MiB, s5cmd
from tests.s3server import S3Server, running_s3_server

BUCKET = "bench"


@dataclass(frozen=True)
class Plan:
    job_runs: int
    download_runs: int
    data_sets: tuple[DataSet, ...]
    fastfile: fastfile.FastFilePlan


DEFAULT = Plan(
    7, 5, (DataSet(2000, 64 * KiB), DataSet(1, 512 * MiB)), fastfile.FastFilePlan(64, 64 * MiB, 5)
)
QUICK = Plan(
    3, 2, (DataSet(200, 64 * KiB), DataSet(1, 64 * MiB)), fastfile.FastFilePlan(8, 32 * MiB, 1)
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer, smaller runs (smoke check)")
    parser.add_argument(
        "--only",
        choices=[
            "overhead",
            "cli",
            "download",
            "local",
            "pipe",
            "fastfile",
            "checkpoints",
            "api",
            "gate",
            "ray",
            "images",
            "invoke",
            "transform",
            "server",
        ],
        help="run one part only",
    )
    return parser.parse_args(argv)


def use_server(server: S3Server, home: Path) -> dict[str, str]:
    """Point this process, and the job workers it starts, at the server and a fresh home."""
    env = server.env()
    os.environ.update(env)
    os.environ["OPENMAKER_HOME"] = str(home)
    s5cmd(env, "mb", f"s3://{BUCKET}")
    return env


def run_overhead(plan: Plan, scratch: Path) -> list[str]:
    print(f"no-op training jobs ({plan.job_runs} runs each: CLI, cold, warm)", flush=True)
    lines = []
    for result in overhead.measure(scratch, f"s3://{BUCKET}/output", plan.job_runs):
        lines += [result.summary(), *result.breakdown()]
    return lines


def run_against_s5cmd(plan: Plan, scratch: Path, env: dict[str, str], mode: str) -> list[str]:
    """File-mode downloads against `s5cmd cp`, or Pipe streams against `s5cmd cat`, on every
    data set of the plan."""
    what, measure, peer = {
        "download": ("File-mode download", download.measure, "s5cmd    "),
        "pipe": ("Pipe-mode stream", pipe.measure, "s5cmd cat"),
    }[mode]
    lines = []
    for data in plan.data_sets:
        print(f"{what} of {data.label} ({plan.download_runs} runs)", flush=True)
        result = measure(data, scratch, BUCKET, env, plan.download_runs)
        lines += [
            result.summary(),
            f"  openmaker {result.openmaker.describe()}",
            f"  {peer} {result.s5cmd.describe()}",
        ]
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    plan = QUICK if args.quick else DEFAULT
    started = time.perf_counter()
    # Job workers may still be closing their files when the last job is seen `Completed`.
    with tempfile.TemporaryDirectory(prefix="openmaker-bench-", ignore_cleanup_errors=True) as tmp:
        scratch = Path(tmp)
        with running_s3_server(scratch / "s3") as server:
            env = use_server(server, scratch / "home")
            lines = []
            if args.only in (None, "overhead"):
                lines += run_overhead(plan, scratch)
            if args.only in (None, "cli"):
                lines += cli.run(args.quick)
            if args.only in (None, "download"):
                lines += run_against_s5cmd(plan, scratch, env, "download")
            if args.only in (None, "local"):
                lines += local.run(args.quick, scratch)
            if args.only in (None, "pipe"):
                lines += run_against_s5cmd(plan, scratch, env, "pipe")
            if args.only in (None, "fastfile"):
                lines += fastfile.run(plan.fastfile, scratch, BUCKET, env)
            if args.only in (None, "checkpoints"):
                lines += checkpoints.run(args.quick, scratch, BUCKET)
            if args.only in (None, "api"):
                lines += api.run(args.quick, scratch)
            if args.only in (None, "gate"):
                lines += gate.run(args.quick, scratch)
            if args.only in (None, "ray"):
                lines += ray.run(args.quick, scratch)
            if args.only in (None, "images"):
                lines += images.run(args.quick, scratch)
            if args.only in (None, "invoke"):
                lines += invoke.run(args.quick, scratch)
            if args.only in (None, "transform"):
                lines += transform.run(args.quick, scratch)
            if args.only in (None, "server"):
                lines += server_jobs.run(args.quick, scratch, f"s3://{BUCKET}/output")
    elapsed = time.perf_counter() - started
    print(f"\nSummary (rclone serve s3 on loopback, MB = 10^6 bytes; {elapsed:.0f} s in all)")
    # Other work on a 2-core machine moves every figure; say how busy it was.
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"{os.cpu_count()} CPUs, load average at the end {load}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
