"""Pipe mode: the bytes per second a reader gets from a channel's FIFO, against `s5cmd cat` of
the same objects into /dev/null."""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.download import (
    DataSet,
    PeerComparison,
    bench_spec,
    ignore_event,
    s5cmd,
    s5cmd_binary,
    upload,
)
from bench.stats import Timings, rate, timed
from openmaker.training.host.channels.pipe import PipeStreamer, plan_pipe
from openmaker.training.host.jobtree import HostTree

TARGET_RATIO = 0.9
READ_SIZE = 1024 * 1024


@dataclass(frozen=True)
class PipeResult(PeerComparison):
    def summary(self) -> str:
        verdict = "ok" if self.ratio >= TARGET_RATIO else "MISSED"
        om, s5 = self.openmaker.median, self.s5cmd.median
        return (
            f"Pipe {self.data.label}: reader of the FIFO {om:.2f} s "
            f"({rate(self.data.total, om)}), s5cmd cat {s5:.2f} s "
            f"({rate(self.data.total, s5)}), ratio {self.ratio:.2f} "
            f"(target >= {TARGET_RATIO:.1f}: {verdict})"
        )


def openmaker_pipe(uri: str, work_dir: Path, store_env: dict[str, str]) -> int:
    """List the channel, stream epoch 0 into its FIFO and read it to EOF: the bytes read."""
    spec = bench_spec(uri, work_dir, store_env, "Pipe")
    (spec.ml_dir / "input" / "data").mkdir(parents=True)
    channel = spec.plan.channels[0]
    tree = HostTree(spec)
    streamer = PipeStreamer(spec, asyncio.run(plan_pipe(spec, channel)), ignore_event, tree)
    streamer.start()
    count = 0
    try:
        fd = os.open(streamer.fifo(0), os.O_RDONLY)
        try:
            while chunk := os.read(fd, READ_SIZE):
                count += len(chunk)
        finally:
            os.close(fd)
    finally:
        streamer.stop()
        tree.close()
    if streamer.error:
        raise RuntimeError(streamer.error)
    return count


def s5cmd_cat(uri: str, store_env: dict[str, str]) -> None:
    command = [s5cmd_binary(), "--endpoint-url", store_env["AWS_ENDPOINT_URL_S3"]]
    command += ["cat", f"{uri}*"]
    subprocess.run(command, env={**os.environ, **store_env}, check=True, stdout=subprocess.DEVNULL)


def measure(
    data: DataSet, scratch: Path, bucket: str, store_env: dict[str, str], runs: int
) -> PipeResult:
    folder = scratch / f"pipe-{data.label}"
    upload(data, folder, bucket, store_env)
    uri = f"s3://{bucket}/{data.prefix}"
    seconds: dict[str, list[float]] = {"openmaker": [], "s5cmd": []}
    for index in range(runs):
        order = ["openmaker", "s5cmd"] if index % 2 == 0 else ["s5cmd", "openmaker"]
        for tool in order:
            if tool == "openmaker":
                work = folder / f"run-{index}"
                count, taken = timed(functools.partial(openmaker_pipe, uri, work, store_env))
                if count != data.total:
                    raise RuntimeError(f"the FIFO gave {count} bytes, expected {data.total}")
            else:
                _, taken = timed(lambda: s5cmd_cat(uri, store_env))
            seconds[tool].append(taken)
        figures = ", ".join(f"{tool} {seconds[tool][-1]:.3f} s" for tool in seconds)
        print(f"  {data.label} run {index + 1}/{runs}: {figures}", flush=True)
    s5cmd(store_env, "rm", f"{uri}*")
    return PipeResult(data, Timings(seconds["openmaker"]), Timings(seconds["s5cmd"]))
