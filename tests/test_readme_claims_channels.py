"""README claims about input channels that no other test checked: a Pipe channel's streamer
holds at most about 128 MiB, never a whole object; a FastFile channel's disk cache is held to
`VolumeSizeInGB`. Real jobs, read by their code; the worker and the cache watched from /proc
and the disk while they run. The data is sparse files: large, and free to make."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from openmaker.training.service import TrainingJobs
from openmaker.training.state import TERMINAL
from tests.helpers import get_object, make_image, request, wait_for, wait_for_log
from tests.process_helpers import code_process, worker_pid
from tests.s3server import RestartableS3Server

MIB = 1024 * 1024
GIB = 1024 * MIB
# "The streamer's memory is bounded (at most about 128 MiB per channel)".
PIPE_BOUND = 128 * MIB


def vm_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def read_bytes(pid: int) -> int:
    """Bytes process `pid` (all its threads) has read so far."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError(f"no rchar for process {pid}")


@contextmanager
def peak_of(measure: Callable[[], int]) -> Iterator[list[int]]:
    """Samples `measure()` every 10 ms while the block runs; yields [the peak so far]."""
    peak = [measure()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            try:
                peak[0] = max(peak[0], measure())
            except (OSError, AssertionError):
                return  # the process or folder is gone: the job has ended

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        done.set()
        thread.join()


def stop_if_running(jobs: TrainingJobs, name: str) -> None:
    if jobs.describe(name)["TrainingJobStatus"] not in TERMINAL:
        jobs.stop(name)
        wait_for(jobs, name)


def sparse_file(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as file:
        file.truncate(size)


# A slow reader: opens the FIFO when told (SIGUSR1), reads a little, and waits to be told again
# before it reads on.
SLOW_READER = (
    "#!"
    + sys.executable
    + """
import signal
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
print("ready", flush=True)
signal.sigwait({signal.SIGUSR1})
total = 0
with open("/opt/ml/input/data/train_0", "rb", buffering=0) as fifo:
    while total < 1024 * 1024:
        total += len(fifo.read(1024 * 1024))
    print("paused", flush=True)
    signal.sigwait({signal.SIGUSR1})
    # Then quickly, twice the bound, and on to the next epoch (never opened).
    while total < 2 * PIPE_BOUND:
        total += len(fifo.read(1024 * 1024))
    first = fifo.read(16)
open("/opt/ml/model/total.txt", "w").write(f"{total} {first == bytes(16)}")
"""
).replace("PIPE_BOUND", str(PIPE_BOUND))


def release(name: str) -> None:
    code = code_process(name)
    assert code is not None, f"the code of {name} is not running"
    os.kill(code, signal.SIGUSR1)


def wait_until_still(measure: Callable[[], int], ceiling: int, quiet: float = 1.0) -> int:
    """Wait until `measure()` stops growing for `quiet` seconds, or reaches `ceiling`."""
    value, since = measure(), time.monotonic()
    deadline = since + 60
    while value < ceiling and time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, "the value never settled"
        time.sleep(0.05)
        now = measure()
        if now != value:
            value, since = now, time.monotonic()
    return value


def test_a_pipe_channel_holds_about_128_mib_of_a_large_object_for_a_slow_reader(
    tmp_path: Path, home: Path
) -> None:
    size = 2 * GIB  # far beyond the bound; sparse, so it costs neither disk nor time to make
    sparse_file(home / "s3" / "pipemem" / "big" / "zeros.bin", size)
    image = make_image(tmp_path / "image", SLOW_READER)
    body = request("pipe-memory", str(image), "s3://pipemem/out", {"train": "s3://pipemem/big/"})
    body["AlgorithmSpecification"]["TrainingInputMode"] = "Pipe"
    jobs = TrainingJobs()
    jobs.create(body)
    try:
        wait_for_log(jobs, "pipe-memory", "ready")
        worker = worker_pid(jobs, "pipe-memory")
        assert worker is not None
        # Nothing is streamed before the code opens the FIFO: the worker's memory at rest.
        at_rest, read_at_rest = vm_rss(worker), read_bytes(worker)
        with peak_of(lambda: vm_rss(worker)) as peak:
            release("pipe-memory")
            wait_for_log(jobs, "pipe-memory", "paused")
            # The reader waits: the streamer reads ahead until its bound stops it (or, were it
            # unbounded, until it holds the whole object).
            fetched = wait_until_still(lambda: read_bytes(worker) - read_at_rest, size)
            held = peak[0] - at_rest
            release("pipe-memory")
            described = wait_for(jobs, "pipe-memory")
        assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")
        assert fetched <= PIPE_BOUND, f"read ahead {fetched / MIB:.0f} MiB for a paused reader"
        assert held <= PIPE_BOUND, f"the worker grew {held / MIB:.0f} MiB while the reader paused"
        assert peak[0] - at_rest <= PIPE_BOUND, f"grew {(peak[0] - at_rest) / MIB:.0f} MiB"
    finally:
        stop_if_running(jobs, "pipe-memory")
    total, zeros = model_text(described, "total.txt").split()
    assert int(total) >= 2 * PIPE_BOUND and zeros == "True"


def model_text(described: dict[str, object], member: str) -> str:
    artifacts = described["ModelArtifacts"]
    assert isinstance(artifacts, dict)
    archive = get_object(artifacts["S3ModelArtifacts"])
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        extracted = tar.extractfile(member)
        assert extracted is not None
        return extracted.read().decode()


# Reads every byte of every file of its FastFile channel, one file after the other.
READ_ALL = (
    "#!"
    + sys.executable
    + """
import pathlib
total = 0
for path in sorted(pathlib.Path("/opt/ml/input/data/train").iterdir()):
    with path.open("rb", buffering=0) as file:
        while chunk := file.read(4 * 1024 * 1024):
            total += len(chunk)
open("/opt/ml/model/total.txt", "w").write(str(total))
"""
)


def allocated(folder: Path) -> int:
    """Bytes of disk that the files under `folder` hold (a sparse file only what is written);
    files that rclone removes meanwhile count for nothing."""
    total = 0
    for parent, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(parent, name)).st_blocks * 512
    return total


def test_the_fastfile_cache_is_held_to_the_volume_size(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    volume_gb, parts, part_size = 1, 5, 256 * MIB  # 1.25 GiB read through a 1 GB volume
    root = tmp_path / "s3root"
    for i in range(parts):
        sparse_file(root / "ffcache" / "big" / f"part-{i}.bin", part_size)
    # Without ETags: rclone would read every byte of the data to list it (its MD5s).
    s3 = RestartableS3Server(root, options=("--etag-hash=",))
    s3.start()
    try:
        server = s3.server
        for variable, value in server.env().items():
            monkeypatch.setenv(variable, value)
        server.make_bucket("ffcache-out")
        image = make_image(tmp_path / "image", READ_ALL)
        body = request("ff-cache", str(image), "s3://ffcache-out/out",
                       {"train": "s3://ffcache/big/"})  # fmt: skip
        body["AlgorithmSpecification"]["TrainingInputMode"] = "FastFile"
        body["ResourceConfig"]["VolumeSizeInGB"] = volume_gb
        cache = home / "jobs" / "ff-cache" / "algo-1" / "fastfile-cache"
        jobs = TrainingJobs()
        jobs.create(body)
        try:
            with peak_of(lambda: allocated(cache) if cache.exists() else 0) as peak:
                described = wait_for(jobs, "ff-cache")
            assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")
            assert int(model_text(described, "total.txt")) == parts * part_size
            # At least the file being read was in the cache; never more than the volume.
            held = peak[0]
            assert part_size <= held <= volume_gb * GIB, f"the cache held {held / MIB:.0f} MiB"
        finally:
            stop_if_running(jobs, "ff-cache")
    finally:
        s3.stop()
