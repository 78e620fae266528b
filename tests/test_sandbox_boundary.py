"""The sandbox as a boundary, attacked from inside real sandboxed jobs: what the code can see of
the machine, user namespaces, fork bombs, and a disk filled through every place it may write."""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from openmaker.settings import load_settings
from openmaker.training.host.volume import mount_points_under
from openmaker.training.service import TrainingJobs
from tests.helpers import (
    get_object,
    log_text,
    make_image,
    put_objects,
    request,
    run_script,
    wait_for,
)
from tests.process_helpers import kill, wait_for_no_processes, wait_until, worker_pid

GIB = 1024**3


def _model_members(description: dict) -> dict[str, bytes]:
    data = get_object(description["ModelArtifacts"]["S3ModelArtifacts"])
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


@pytest.fixture
def planted() -> Iterator[dict[str, Path]]:
    """Files of the machine's users and of root, as a real machine has them."""
    tag = secrets.token_hex(4)
    paths = {"home": Path(f"/home/openmaker-test-{tag}"), "root": Path(f"/root/openmaker-{tag}")}
    for folder in paths.values():
        folder.mkdir()
        (folder / "secret.txt").write_text("the machine's own")
    try:
        yield paths
    finally:
        for folder in paths.values():
            (folder / "secret.txt").unlink()
            folder.rmdir()


LOOK_AROUND = f"""#!{sys.executable}
import json, os, pathlib
def read(path):
    try:
        return pathlib.Path(path).read_bytes().decode(errors="replace")
    except OSError as exc:
        return "error: " + exc.strerror
def listing(path):
    try:
        return sorted(os.listdir(path))
    except OSError as exc:
        return "error: " + exc.strerror
pathlib.Path("/root/written").write_text("home is writable")
seen = {{
    "shadow": read("/etc/shadow"),
    "gshadow": read("/etc/gshadow"),
    "root": listing("/root"),
    "home": listing("/home"),
    "home_env": os.environ["HOME"],
    "mountinfo": read("/proc/self/mountinfo"),
    "mounts": read("/proc/self/mounts"),
    "environ": read("/proc/1/environ"),
    "cmdline": read("/proc/1/cmdline"),
    "channel": read("/opt/ml/input/data/train/x.csv"),
}}
pathlib.Path("/opt/ml/model/seen.json").write_text(json.dumps(seen))
"""


def test_the_code_sees_nothing_private_of_the_machine_and_no_path_of_openmakers(
    tmp_path: Path, home: Path, planted: dict[str, Path]
) -> None:
    assert Path("/etc/shadow").read_text()  # the machine has one, with its hashes
    # A FastFile channel over the embedded store shows a folder of openmaker's home.
    put_objects({"s3://look/train/x.csv": b"1,2\n"})
    _, description = run_script(
        tmp_path,
        "look-around",
        LOOK_AROUND,
        channels={"train": "s3://look/train"},
        edit=lambda body: body["InputDataConfig"][0].update(InputMode="FastFile"),
    )
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    seen = json.loads(_model_members(description)["seen.json"])
    assert seen["channel"] == "1,2\n"

    assert seen["shadow"] == "" and seen["gshadow"] == ""
    assert seen["home"] == []
    # HOME=/root is an empty folder of the job's own; at most the way to openmaker's Python
    # (which may live under /root) shows in it.
    python_ways = {
        Path(prefix).relative_to("/root").parts[0]
        for prefix in (sys.prefix, sys.base_prefix)
        if Path(os.path.realpath(prefix)).is_relative_to("/root")
    }
    assert seen["home_env"] == "/root"
    assert set(seen["root"]) <= {"written", *python_ways}
    assert planted["root"].name not in seen["root"]
    assert not (planted["root"].parent / "written").exists()

    job_folder = home / "jobs" / "look-around"
    for name in ("mountinfo", "mounts", "environ", "cmdline"):
        for path in {str(home), os.path.realpath(home), str(job_folder)}:
            assert path not in seen[name], f"{path} shows in {name}: {seen[name]}"
    assert "upperdir=upper,workdir=work" in seen["mountinfo"]


USERNS = f"""#!{sys.executable}
import ctypes, os, subprocess
CLONE_NEWUSER = 0x10000000
libc = ctypes.CDLL(None, use_errno=True)
print("uid", os.getuid(), open("/proc/self/uid_map").read().split())
for argv in (["unshare", "-U", "true"], ["unshare", "-U", "-r", "true"]):
    code = subprocess.run(argv, capture_output=True).returncode
    print(" ".join(argv), "exit", code)
result = libc.unshare(CLONE_NEWUSER)
print("unshare(CLONE_NEWUSER):", result, os.strerror(ctypes.get_errno()) if result else "made")
"""


def test_the_code_cannot_make_user_namespaces(tmp_path: Path, home: Path) -> None:
    jobs, description = run_script(tmp_path, "userns", USERNS)
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    logs = log_text(jobs, "userns")
    assert "unshare(CLONE_NEWUSER): -1" in logs, logs
    assert "unshare -U true exit 1" in logs
    assert "unshare -U -r true exit 1" in logs
    # Still root, with every user id of the machine its own (files keep their owners).
    assert "uid 0 ['0', '0', '4294967295']" in logs


# The kernel's settings and triggers under /proc: writable, a job's root could have the machine
# run a program of its choosing as root (kernel.core_pattern) or reboot it (sysrq-trigger).
PROC_WRITES = f"""#!{sys.executable}
import contextlib
import os
for path in ("/proc/sys/kernel/core_pattern", "/proc/sys/vm/drop_caches",
             "/proc/sys/net/ipv4/ip_forward", "/proc/sysrq-trigger",
             "/proc/irq/default_smp_affinity",
             "/sys/kernel/uevent_helper"):
    try:
        os.close(os.open(path, os.O_WRONLY))
        print("WRITABLE", path, flush=True)
    except OSError as exc:
        print("refused", path, exc.errno, flush=True)
print("read", open("/proc/sys/kernel/ostype").read().strip(), flush=True)
"""


def test_the_code_cannot_write_the_kernels_settings(tmp_path: Path, home: Path) -> None:
    jobs, description = run_script(tmp_path, "procsys", PROC_WRITES)
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    logs = log_text(jobs, "procsys")
    assert "WRITABLE" not in logs, logs
    assert logs.count("refused") == 6, logs
    assert "read Linux" in logs  # still readable, as in a Docker container


FORK_BOMB = f"""#!{sys.executable}
import os, time
children = 0
try:
    while children < 300:  # bounded: without a limit it stops here
        if os.fork() == 0:
            time.sleep(3600)
            os._exit(0)
        children += 1
except OSError as exc:
    print("fork failed:", exc.strerror, flush=True)
print("forked", children, flush=True)
time.sleep(3600)
"""


def test_a_fork_bomb_stops_at_the_pids_limit_and_the_job_still_stops(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENMAKER_PIDS_LIMIT", "64")
    monkeypatch.setenv("OPENMAKER_STOP_GRACE_SECONDS", "1")
    jobs = TrainingJobs()
    jobs.create(request("fork-bomb", str(make_image(tmp_path / "image", FORK_BOMB)), "s3://b/o"))
    wait_until(lambda: "forked" in log_text(jobs, "fork-bomb"), "the fork bomb to stop")
    logs = log_text(jobs, "fork-bomb")
    count = int(logs.split("forked ")[1].split()[0])
    assert 32 < count < 64, logs
    assert "fork failed" in logs
    started = time.monotonic()
    jobs.stop("fork-bomb")
    description = wait_for(jobs, "fork-bomb", timeout=30)
    assert description["TrainingJobStatus"] == "Stopped", description.get("FailureReason")
    assert time.monotonic() - started < 15
    training = [t for t in description["SecondaryStatusTransitions"] if t["Status"] == "Training"]
    assert "at most 64 processes" in training[0]["StatusMessage"]
    wait_for_no_processes("fork-bomb")


def _fill(path: str, how: str) -> str:
    """A program that writes (or allocates, which is as good for filling a disk and costs no
    I/O) 2 GiB in `path`, saying how far it got."""
    return f"""#!{sys.executable}
import contextlib
import os
print("filling {path}", flush=True)
done = 0
os.makedirs(os.path.dirname("{path}"), exist_ok=True)
fd = os.open("{path}", os.O_WRONLY | os.O_CREAT, 0o644)
try:
    while done < 2 << 30:
        if "{how}" == "write":
            done += os.write(fd, b"x" * (1 << 20))
        else:
            os.posix_fallocate(fd, done, 64 << 20)
            done += 64 << 20
finally:
    print("{how}", done >> 20, "MiB", flush=True)
"""


class _Allocated:
    """The most disk space the files under a folder took while it runs: blocks allocated, on
    the folder's own filesystem (the job's mounted volume is counted as its backing file).
    Not the filesystem's free space: other work on a shared machine moves that by gigabytes."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.done = folder, threading.Event()
        self.start = self.highest = self._allocated()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _allocated(self) -> int:
        device, total, folders = os.stat(self.folder).st_dev, 0, [str(self.folder)]
        while folders:
            with contextlib.suppress(OSError), os.scandir(folders.pop()) as entries:
                for entry in entries:
                    with contextlib.suppress(OSError):
                        stat = entry.stat(follow_symlinks=False)
                        if stat.st_dev != device:
                            continue
                        total += stat.st_blocks * 512
                        if entry.is_dir(follow_symlinks=False):
                            folders.append(entry.path)
        return total

    def _sample(self) -> None:
        while not self.done.wait(0.05):
            self.highest = max(self.highest, self._allocated())

    def __enter__(self) -> _Allocated:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.done.set()
        self.thread.join()


# 1 GB is the smallest volume SageMaker takes: each case fills 1 GB. Writing it takes seconds
# (the volume writes through to the disk); the other places are filled by allocation.
@pytest.mark.parametrize(
    ("path", "how"),
    [("/opt/ml/model/big", "write"), ("/tmp/big", "allocate"), ("/var/tmp/x/big", "allocate")],
)
def test_a_job_that_fills_its_volume_fails_alone(
    tmp_path: Path, home: Path, path: str, how: str
) -> None:
    name = "fill-" + path.split("/")[1]
    home.mkdir(parents=True, exist_ok=True)
    with _Allocated(home) as disk:
        jobs, description = run_script(
            tmp_path,
            name,
            _fill(path, how),
            edit=lambda body: body["ResourceConfig"].update(VolumeSizeInGB=1),
        )
    assert description["TrainingJobStatus"] == "Failed"
    assert description["FailureReason"] == "ClientError: no space left on the job's volume (1 GB)"
    training = [t for t in description["SecondaryStatusTransitions"] if t["Status"] == "Training"]
    assert "a 1 GB volume" in training[0]["StatusMessage"]
    # The job's logs are whole: its first line, the error, its last line.
    logs = log_text(jobs, name)
    assert f"filling {path}" in logs and "No space left on device" in logs
    filled = int(logs.split(f"{how} ")[1].split()[0])
    assert 700 < filled < 1024, logs
    # openmaker's disk never held more for the job than its volume (and a little besides).
    assert disk.highest - disk.start < 1.25 * GIB, disk.highest - disk.start
    # The volume went with the job.
    assert not mount_points_under(load_settings().jobs_dir)
    assert not list((home / "jobs" / name).glob("algo-*"))
    # openmaker goes on: the next job runs.
    _, after = run_script(tmp_path / "after", f"after-{name}", "#!/bin/sh\necho fine\n")
    assert after["TrainingJobStatus"] == "Completed", after.get("FailureReason")


def test_a_volume_larger_than_the_free_disk_is_cut_to_it(tmp_path: Path, home: Path) -> None:
    script = "#!/bin/sh\ndf -k /opt/ml | tail -1\n"
    jobs, description = run_script(
        tmp_path,
        "huge-volume",
        script,
        edit=lambda body: body["ResourceConfig"].update(VolumeSizeInGB=16384),
    )
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    training = [t for t in description["SecondaryStatusTransitions"] if t["Status"] == "Training"]
    message = training[0]["StatusMessage"]
    assert "(16384 GB asked; openmaker's disk has no more free beyond its reserve)" in message
    size_kib = int(log_text(jobs, "huge-volume").split()[1])
    stat = os.statvfs(home)
    assert size_kib * 1024 < stat.f_bavail * stat.f_frsize


def test_a_killed_workers_volume_is_unmounted_and_removed(tmp_path: Path, home: Path) -> None:
    script = "#!/bin/sh\necho ready\nwhile true; do sleep 0.1; done\n"
    jobs = TrainingJobs()
    jobs.create(request("lost-volume", str(make_image(tmp_path / "image", script)), "s3://b/o"))
    wait_until(lambda: "ready" in log_text(jobs, "lost-volume"), "the code to start")
    jobs_dir = load_settings().jobs_dir
    assert [p.name for p in mount_points_under(jobs_dir)] == ["algo-1"]
    pid = worker_pid(jobs, "lost-volume")
    assert pid is not None
    kill(pid)
    description = wait_for(jobs, "lost-volume", timeout=30)
    assert description["TrainingJobStatus"] == "Failed"
    assert not mount_points_under(jobs_dir)
    assert not list((jobs_dir / "lost-volume").glob("algo-*"))

    def image_released() -> bool:
        backing = subprocess.run(
            ["losetup", "--list", "--noheadings", "--output", "BACK-FILE"],
            capture_output=True,
            text=True,
        ).stdout
        return str(jobs_dir) not in backing

    # The loop device goes once the last of the sandbox's processes has let go of the volume.
    wait_until(image_released, "the volume's loop device to be released", timeout=15)


READ_AUTH = f"""#!{sys.executable}
import os, sys
path = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("AUTH_PATH", "")
print("auth visible" if os.path.exists(path) else "auth unseen", flush=True)
print("folder visible" if os.path.isdir(os.path.dirname(path)) else "folder unseen", flush=True)
"""


def test_the_code_never_sees_the_registries_credentials(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Outside /tmp and the folders hidden by default, where an admin may well keep it.
    folder = Path("/var/lib") / f"openmaker-test-{secrets.token_hex(4)}"
    folder.mkdir()
    try:
        auth = folder / "auth.json"
        auth.write_text('{"auths": {"registry.example": {"auth": "c2VjcmV0OnNlY3JldA=="}}}')
        auth.chmod(0o600)
        monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth))
        jobs, description = run_script(
            tmp_path,
            "no-auth",
            READ_AUTH,
            edit=lambda body: body.update(Environment={"AUTH_PATH": str(auth)}),
        )
        assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
        logs = log_text(jobs, "no-auth")
        assert "auth unseen" in logs and "folder visible" in logs, logs
    finally:
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
