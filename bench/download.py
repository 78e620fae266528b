"""File-mode download: openmaker's `download_channels` against `s5cmd cp` on the same objects."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib.metadata import distribution
from pathlib import Path
from typing import Any

from bench.stats import Timings, rate, timed
from openmaker.settings import load_settings
from openmaker.training.host.channels.download import download_channels
from openmaker.training.host.events import Event
from openmaker.training.host.spec import HostSettings, HostSpec
from openmaker.training.plan import plan_job

KiB, MiB = 1024, 1024 * 1024
TARGET_RATIO = 1.0
# Many small objects are where a client's own overhead shows: the target there is higher.
SMALL_OBJECT_TARGET_RATIO = 1.2
SMALL_OBJECT_SIZE = MiB
# Files larger than this are fingerprinted by SAMPLE_SLICES slices, not read whole.
WHOLE_FILE_LIMIT = 4 * MiB
SAMPLE_SLICES = 16
SAMPLE_FILES = 25


@dataclass(frozen=True)
class DataSet:
    count: int
    size: int

    @property
    def label(self) -> str:
        size = f"{self.size // MiB}MiB" if self.size >= MiB else f"{self.size // KiB}KiB"
        return f"{self.count}x{size}"

    @property
    def prefix(self) -> str:
        return f"data/{self.label}/"

    @property
    def total(self) -> int:
        return self.count * self.size


@dataclass(frozen=True)
class Expected:
    """What a correct download of a data set looks like: every file's size, a sample's hash."""

    sizes: dict[str, int]
    sample: list[str]
    digest: str


@dataclass(frozen=True)
class PeerComparison:
    """openmaker's timings against s5cmd's on one data set; above 1, openmaker is faster."""

    data: DataSet
    openmaker: Timings
    s5cmd: Timings

    @property
    def ratio(self) -> float:
        return self.s5cmd.median / self.openmaker.median

    def summary(self) -> str:
        """One line: both timings, the ratio and whether it met its target."""
        raise NotImplementedError


@dataclass(frozen=True)
class DownloadResult(PeerComparison):
    @property
    def target(self) -> float:
        return SMALL_OBJECT_TARGET_RATIO if self.data.size < SMALL_OBJECT_SIZE else TARGET_RATIO

    def summary(self) -> str:
        verdict = "ok" if self.ratio >= self.target else "MISSED"
        om, s5 = self.openmaker.median, self.s5cmd.median
        return (
            f"File {self.data.label}: openmaker {om:.2f} s ({rate(self.data.total, om)}), "
            f"s5cmd {s5:.2f} s ({rate(self.data.total, s5)}), ratio {self.ratio:.2f} "
            f"(target >= {self.target:.1f}: {verdict})"
        )


# --- the data ---------------------------------------------------------------------------------


def write_random_file(path: Path, size: int) -> None:
    with open(path, "wb") as out:
        for start in range(0, size, 8 * MiB):
            out.write(os.urandom(min(8 * MiB, size - start)))


def make_local(data: DataSet, folder: Path) -> None:
    folder.mkdir(parents=True)
    for index in range(data.count):
        write_random_file(folder / f"part-{index:05d}.bin", data.size)


def file_sizes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def fingerprint(folder: Path, sample: list[str]) -> str:
    """A hash of the sampled files: whole when small, evenly spread slices when large."""
    digest = hashlib.blake2b()
    for relative in sample:
        digest.update(relative.encode())
        with open(folder / relative, "rb") as source:
            size = os.fstat(source.fileno()).st_size
            if size <= WHOLE_FILE_LIMIT:
                digest.update(source.read())
                continue
            step = (size - MiB) // (SAMPLE_SLICES - 1)
            for index in range(SAMPLE_SLICES):
                source.seek(index * step)
                digest.update(source.read(MiB))
    return digest.hexdigest()


def expectation(folder: Path) -> Expected:
    sizes = file_sizes(folder)
    names = sorted(sizes)
    sample = names[:: max(1, len(names) // SAMPLE_FILES)]
    return Expected(sizes, sample, fingerprint(folder, sample))


def verify(tool: str, folder: Path, expected: Expected) -> None:
    """Refuse a timing whose download is incomplete or wrong, so the benchmark cannot lie."""
    sizes = file_sizes(folder)
    if sizes != expected.sizes:
        raise RuntimeError(
            f"{tool}: {len(sizes)} files / {sum(sizes.values())} bytes in {folder}, expected "
            f"{len(expected.sizes)} files / {sum(expected.sizes.values())} bytes"
        )
    if fingerprint(folder, expected.sample) != expected.digest:
        raise RuntimeError(f"{tool}: the content of the sampled files in {folder} differs")


# --- the tools --------------------------------------------------------------------------------


@cache
def s5cmd_binary() -> str:
    """The s5cmd program the `s5cmd` Python package ships. Its `s5cmd` script starts Python
    first (+43 % on 200 × 64 KiB): the peer runs the program itself."""
    for file in distribution("s5cmd").files or ():
        if str(file) == "s5cmd/bin/s5cmd":
            return str(Path(str(file.locate())).resolve(strict=True))
    raise RuntimeError("the s5cmd package ships no s5cmd/bin/s5cmd: reinstall it")


def s5cmd(store_env: Mapping[str, str], *arguments: str) -> None:
    # s5cmd ignores AWS_ENDPOINT_URL*: the endpoint has to be given on the command line.
    command = [
        s5cmd_binary(),
        "--endpoint-url",
        store_env["AWS_ENDPOINT_URL_S3"],
        *arguments,
    ]
    env = {**os.environ, **store_env}
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)


def channel_request(uri: str, mode: str = "File") -> dict[str, Any]:
    channel = {
        "ChannelName": "train",
        "DataSource": {
            "S3DataSource": {
                "S3DataType": "S3Prefix",
                "S3Uri": uri,
                "S3DataDistributionType": "FullyReplicated",
            }
        },
    }
    return {
        "TrainingJobName": "bench-download",
        "AlgorithmSpecification": {"TrainingImage": "/unused", "TrainingInputMode": mode},
        "InputDataConfig": [channel],
        "OutputDataConfig": {"S3OutputPath": "s3://unused/out"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1},
    }


def ignore_event(_: Event) -> None:
    pass


def bench_spec(
    uri: str,
    work_dir: Path,
    store_env: dict[str, str],
    mode: str,
    environ: Mapping[str, str] = os.environ,
) -> HostSpec:
    """One host whose only channel, `train`, is `uri` in input mode `mode`."""
    settings = load_settings({**environ, **store_env})
    return HostSpec(
        job_name="bench-download",
        job_arn="arn:aws:sagemaker:us-east-1:000000000000:training-job/bench-download",
        plan=plan_job(channel_request(uri, mode)).host_plan("algo-1"),
        host_name="algo-1",
        hosts=["algo-1"],
        region=settings.region,
        settings=HostSettings.of(settings),
        work_dir=work_dir,
    )


def openmaker_download(uri: str, work_dir: Path, store_env: dict[str, str]) -> Path:
    """Download the channel with openmaker; returns the folder the objects landed in."""
    spec = bench_spec(uri, work_dir, store_env, "File")
    download_channels(spec, ignore_event)
    return spec.ml_dir / "input" / "data" / "train"


def s5cmd_download(uri: str, work_dir: Path, store_env: dict[str, str]) -> Path:
    s5cmd(store_env, "cp", f"{uri}*", f"{work_dir}/")
    return work_dir


Downloader = Callable[[str, Path, dict[str, str]], Path]
TOOLS: dict[str, Downloader] = {"openmaker": openmaker_download, "s5cmd": s5cmd_download}


# --- the measurement --------------------------------------------------------------------------


def upload(data: DataSet, folder: Path, bucket: str, store_env: dict[str, str]) -> Expected:
    """Create the objects once, through S3 (rclone does not see files written under its root)."""
    source = folder / "source"
    make_local(data, source)
    s5cmd(store_env, "cp", f"{source}/*", f"s3://{bucket}/{data.prefix}")
    # rclone hashes an object (its ETag) the first time it lists it: 2 s for 512 MiB on a busy
    # 2-core machine, which the first tool to run would pay alone. Listed once here.
    s5cmd(store_env, "ls", f"s3://{bucket}/{data.prefix}*")
    return expectation(source)


def timed_download(
    tool: str, uri: str, work_dir: Path, store_env: dict[str, str]
) -> tuple[Path, float]:
    """The folder the objects landed in, and the seconds it took."""
    work_dir.mkdir(parents=True)  # a fresh destination each run
    # Dirty pages of earlier runs are written back now, not during this run.
    os.sync()
    return timed(lambda: TOOLS[tool](uri, work_dir, store_env))


def measure(
    data: DataSet, scratch: Path, bucket: str, store_env: dict[str, str], runs: int
) -> DownloadResult:
    # Nothing is deleted until every run is done: ext4 (without a journal, as here) scans past
    # recently deleted inodes when it creates a file, so 2,000 deletions just before a run make
    # each file creation of that run slower (seen with perf: `recently_deleted`).
    folder = scratch / data.label
    try:
        return _measure(data, folder, bucket, store_env, runs)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _measure(
    data: DataSet, folder: Path, bucket: str, store_env: dict[str, str], runs: int
) -> DownloadResult:
    expected = upload(data, folder, bucket, store_env)
    uri = f"s3://{bucket}/{data.prefix}"
    seconds: dict[str, list[float]] = {tool: [] for tool in TOOLS}
    for index in range(runs):
        # Alternate which tool goes first, so neither always meets a warmer server.
        order = list(TOOLS) if index % 2 == 0 else list(reversed(TOOLS))
        for tool in order:
            landed, taken = timed_download(tool, uri, folder / f"{tool}-{index}", store_env)
            verify(tool, landed, expected)
            seconds[tool].append(taken)
        figures = ", ".join(f"{tool} {seconds[tool][-1]:.3f} s" for tool in TOOLS)
        print(f"  {data.label} run {index + 1}/{runs}: {figures}", flush=True)
    return DownloadResult(data, Timings(seconds["openmaker"]), Timings(seconds["s5cmd"]))
