"""README claims about a job's life that no other test checked: Ctrl-C while following a job
stops the following, not the job; OPENMAKER_KEEP_JOB_FILES keeps a host's folder (its files in
its volume.img), and without it the folder goes. Real `openmaker` commands, real jobs."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from openmaker.training.service import TrainingJobs
from openmaker.training.state import TERMINAL
from tests.apiserver import openmaker_command
from tests.helpers import get_object, make_image, run_script, wait_for
from tests.process_helpers import code_process, wait_until, worker_pid

# Waits, after its first line, for SIGUSR1 from the test; then writes its model and ends.
RELEASED = (
    "#!"
    + sys.executable
    + """
import signal
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
print("waiting for the release", flush=True)
signal.sigwait({signal.SIGUSR1})
print("released", flush=True)
open("/opt/ml/model/after-release.txt", "w").write("done")
"""
)


@contextlib.contextmanager
def following(args: list[str], output: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`openmaker ARGS` in a process group of its own, as a terminal runs a command."""
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [*openmaker_command(), *args], stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True, env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def interrupt(process: subprocess.Popen[bytes], output: Path, after: str) -> int:
    """Ctrl-C (SIGINT to the whole process group) once `after` was printed; the exit status."""
    wait_until(lambda: after in output.read_text(), f"{after!r} in {output.name}")
    os.killpg(process.pid, signal.SIGINT)
    return process.wait(timeout=30)


def assert_still_running(jobs: TrainingJobs, name: str) -> None:
    assert jobs.describe(name)["TrainingJobStatus"] == "InProgress"
    worker = worker_pid(jobs, name)
    assert worker is not None and Path(f"/proc/{worker}").exists()
    assert code_process(name) is not None


def test_ctrl_c_stops_the_following_not_the_job(tmp_path: Path, home: Path) -> None:
    image = make_image(tmp_path / "image", RELEASED)
    name = "ctrl-c"
    jobs = TrainingJobs()
    try:
        train = ["train", "--image", str(image), "--job-name", name, "--output", "s3://b/out"]
        waited = tmp_path / "train.out"
        with following(train, waited) as process:
            status = interrupt(process, waited, "waiting for the release")
        assert status == 130, waited.read_text()
        assert "Stopped following; the job goes on" in waited.read_text()
        assert_still_running(jobs, name)

        followed = tmp_path / "logs.out"
        with following(["jobs", "logs", name, "--follow"], followed) as process:
            status = interrupt(process, followed, "waiting for the release")
        assert status == 130, followed.read_text()
        assert "Stopped following; the job goes on" in followed.read_text()
        assert_still_running(jobs, name)

        code = code_process(name)
        assert code is not None
        os.kill(code, signal.SIGUSR1)
        described = wait_for(jobs, name)
        assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")
        archive = get_object(described["ModelArtifacts"]["S3ModelArtifacts"])
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            assert "after-release.txt" in tar.getnames()
    finally:
        if jobs.describe(name)["TrainingJobStatus"] not in TERMINAL:
            jobs.stop(name)
            wait_for(jobs, name)


# Leaves a file in each place the README names as the host's: its /opt/ml tree and the
# sandbox's /tmp.
LEAVES_FILES = """#!/bin/sh
echo kept > /opt/ml/output/data/post-mortem.txt
echo scratch > /tmp/scratch-post-mortem.txt
"""


def attached(image: Path) -> bool:
    listed = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True)
    return bool(listed.stdout.strip())


@pytest.mark.parametrize("keep", [True, False], ids=["kept", "removed"])
def test_keep_job_files_keeps_the_hosts_folder_and_its_volume(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch, keep: bool
) -> None:
    if keep:
        monkeypatch.setenv("OPENMAKER_KEEP_JOB_FILES", "1")
    else:
        monkeypatch.delenv("OPENMAKER_KEEP_JOB_FILES", raising=False)
    name = "kept" if keep else "removed"
    _, described = run_script(tmp_path, name, LEAVES_FILES)
    assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")
    folder = home / "jobs" / name / "algo-1"
    if not keep:
        assert not folder.exists(), sorted(p.name for p in folder.iterdir())
        return
    image = folder / "volume.img"
    assert image.is_file()
    # Unmounted when the host ended (lazily: the loop device goes once the worker, which
    # ends after recording the job's end, lets go of it).
    assert str(folder) not in Path("/proc/self/mountinfo").read_text()
    wait_until(lambda: not attached(image), f"{image} to be detached from its loop device")
    shown = tmp_path / "shown"
    shown.mkdir()
    subprocess.run(["mount", "-o", "loop,ro", str(image), str(shown)], check=True)
    try:
        found = {p.name: p.read_text() for p in shown.rglob("*post-mortem.txt")}
    finally:
        subprocess.run(["umount", str(shown)], check=True)
    assert found == {"post-mortem.txt": "kept\n", "scratch-post-mortem.txt": "scratch\n"}
