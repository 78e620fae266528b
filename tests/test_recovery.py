"""Restart safety: `kill -9` of the openmaker processes (the CLI, a job's starter, its worker,
the server) while jobs run; what openmaker does when it starts again."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from openmaker.jobs.db import TrainingJob
from openmaker.settings import load_settings
from openmaker.training.host.limits import jobs_with_cgroups, memory_cgroup_root
from openmaker.training.service import TrainingJobs
from tests.apiserver import openmaker_command, running_api_server
from tests.helpers import make_image, request, stored_job, wait_for
from tests.process_helpers import (
    code_process,
    job_processes,
    kill,
    processes_mentioning,
    wait_for_no_processes,
    wait_until,
    worker_pid,
)

RUN_UNTIL_STOPPED = "#!/bin/sh\ntrap 'exit 0' TERM\necho ready\nwhile true; do sleep 0.1; done\n"
# Runs for a while, then ends well.
SHORT = '#!/bin/sh\necho ready\nsleep 3\necho done > "${SAGEMAKER_BASE_DIR:-/opt/ml}/model/done"\n'


def _secondary(jobs: TrainingJobs, name: str) -> str:
    return str(jobs.describe(name)["SecondaryStatus"])


def test_the_cli_killed_while_following_a_job_leaves_the_job_running(
    tmp_path: Path, home: Path
) -> None:
    image = make_image(tmp_path / "image", RUN_UNTIL_STOPPED)
    command = [*openmaker_command(), "train", "--image", str(image), "--output", "s3://b/out"]
    cli = subprocess.Popen(
        [*command, "--job-name", "cli-killed", "--wait"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    jobs = TrainingJobs()
    wait_until(
        lambda: _row_exists(jobs, "cli-killed") and _secondary(jobs, "cli-killed") == "Training",
        "the job to train",
    )
    kill(cli.pid)
    cli.wait()
    # The worker goes on (it is in a session of its own); the next command finds it running.
    shown = subprocess.run(
        [*openmaker_command(), "jobs", "describe", "cli-killed", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(shown.stdout)["SecondaryStatus"] == "Training"
    # Still the same worker's job: a stop reaches its code, which ends as it likes.
    subprocess.run([*openmaker_command(), "jobs", "stop", "cli-killed"], check=True)
    description = wait_for(jobs, "cli-killed")
    assert description["TrainingJobStatus"] == "Stopped", description.get("FailureReason")
    assert "Restarting" not in [t["Status"] for t in description["SecondaryStatusTransitions"]]
    wait_for_no_processes("cli-killed")


def _row_exists(jobs: TrainingJobs, name: str) -> bool:
    with jobs.sessions() as session:
        return session.get(TrainingJob, name) is not None


# Creates a job whose start never completes: the process is killed while starting it.
HANGING_STARTER = """
import json, sys, time
from openmaker.settings import load_settings
from openmaker.jobs.executor import LocalExecutor
from openmaker.training.service import TrainingJobs

class Hanging(LocalExecutor):
    def submit(self, *args, **kwargs):
        print("starting", flush=True)
        time.sleep(600)

TrainingJobs(executor=Hanging(load_settings())).create(json.loads(sys.argv[1]))
"""


@pytest.mark.parametrize("retries", [None, 1])
def test_a_job_whose_starter_was_killed_is_restarted_or_failed_by_the_next_command(
    tmp_path: Path, home: Path, retries: int | None
) -> None:
    body = request("orphaned-start", str(make_image(tmp_path / "image", SHORT)), "s3://b/out")
    if retries:
        body["RetryStrategy"] = {"MaximumRetryAttempts": retries}
    starter = subprocess.Popen(
        [sys.executable, "-c", HANGING_STARTER, json.dumps(body)], stdout=subprocess.PIPE
    )
    assert starter.stdout is not None
    assert starter.stdout.readline() == b"starting\n"
    kill(starter.pid)
    starter.wait()

    jobs = TrainingJobs()  # what any command does first: the recovery sweep
    description = wait_for(jobs, "orphaned-start")
    what = (
        f"the openmaker process starting the job (process {starter.pid}) ended without finishing it"
    )
    if retries:
        assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
        restarting = [
            t for t in description["SecondaryStatusTransitions"] if t["Status"] == "Restarting"
        ]
        assert len(restarting) == 1
        assert what in restarting[0]["StatusMessage"]
    else:
        assert description["TrainingJobStatus"] == "Failed"
        assert description["FailureReason"] == f"InternalServerError: {what}"


# The next command: a list, or a submission (which sweeps after its create).
@pytest.mark.parametrize(("sandbox", "command"), [("bwrap", "list"), ("none", "train")])
def test_a_worker_killed_with_nobody_watching_is_found_by_the_next_command(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch, sandbox: str, command: str
) -> None:
    if sandbox == "none":
        monkeypatch.setenv("OPENMAKER_SANDBOX", "none")
    # One job at a time: the second waits for the first.
    monkeypatch.setenv("OPENMAKER_CAPACITY", "strict")
    monkeypatch.setenv("OPENMAKER_CPUS", "2")
    monkeypatch.setenv("OPENMAKER_MEMORY_GIB", "16")
    looping = make_image(tmp_path / "looping", RUN_UNTIL_STOPPED)
    jobs = TrainingJobs()
    jobs.create(request("lost", str(looping), "s3://b/out"))
    jobs.create(request("next", str(make_image(tmp_path / "short", SHORT)), "s3://b/out"))
    program = str(looping / "train") if sandbox == "none" else "/opt/program/train"
    wait_until(
        lambda: code_process("lost", program) is not None and stored_job(jobs, "lost").worker_ready,
        "the code to run and its worker to take the job over",
    )
    assert stored_job(jobs, "next").secondary_status == "Pending"
    limited = memory_cgroup_root() is not None
    if limited:
        assert "lost" in jobs_with_cgroups(home)

    pid = worker_pid(jobs, "lost")
    assert pid is not None
    kill(pid)
    # The code dies with its worker, sandboxed or not: nothing of the job goes on running.
    wait_for_no_processes("lost")
    assert stored_job(jobs, "lost").status == "InProgress"  # nobody has looked yet

    quick = make_image(tmp_path / "quick", "#!/bin/sh\nexit 0\n")
    arguments = {
        "list": ["jobs", "list"],
        "train": ["train", "--image", str(quick), "--output", "s3://b/out", "--job-name",
                  "third", "--no-wait"],
    }[command]  # fmt: skip
    subprocess.run([*openmaker_command(), *arguments], check=True, capture_output=True)
    lost = stored_job(jobs, "lost")
    assert lost.status == "Failed"
    assert lost.failure_reason == (
        f"InternalServerError: the openmaker worker running the job (process {pid}) ended "
        "without finishing it"
    )
    assert lost.placement is None and lost.worker is None
    assert not list((load_settings().jobs_dir / "lost").glob("algo-*"))
    if limited:
        assert "lost" not in jobs_with_cgroups(home)
    # Its share of the machine went to the job that waited.
    description = wait_for(jobs, "next")
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    if command == "train":
        description = wait_for(jobs, "third")
        assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")


def test_a_server_killed_and_started_again_reattaches_and_restarts_its_jobs(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    image = make_image(tmp_path / "image", RUN_UNTIL_STOPPED)
    # Outputs to a folder: the restarted server's embedded store is on another port.
    body = request("served", str(image), (tmp_path / "out").as_uri())
    body["RetryStrategy"] = {"MaximumRetryAttempts": 1}
    try:
        _kill_and_restart_the_server(home, body)
    finally:
        # Never leave a job running behind a failed test, nor what the killed server left
        # (its embedded store's rclone outlives a kill -9 of the server).
        for pid in job_processes("served") + processes_mentioning(str(home)):
            with contextlib.suppress(ProcessLookupError):
                kill(pid)
    wait_for_no_processes("served")


def _kill_and_restart_the_server(home: Path, body: dict) -> None:
    with running_api_server(home) as server:
        client = server.client("sagemaker")
        client.create_training_job(**body)
        wait_until(lambda: code_process("served") is not None, "the code to run")
        kill(server.process.pid)
        server.process.wait()
    # kill -9 leaves the server's record behind; the test helper waits for a new one.
    (home / "server.json").unlink()
    wait_until(lambda: _worker_in(home, "served") is not None, "the worker to take the job")
    first_worker = _worker_in(home, "served")
    assert first_worker is not None
    assert job_processes("served"), "the job's worker and code outlive the server"

    with running_api_server(home) as server:
        client = server.client("sagemaker")
        described = client.describe_training_job(TrainingJobName="served")
        # Re-attached: the worker still runs the job, untouched.
        assert (described["TrainingJobStatus"], described["SecondaryStatus"]) == (
            "InProgress",
            "Training",
        )
        assert _worker_in(home, "served") == first_worker

        kill(first_worker)

        def training_again() -> bool:  # polled as the SDK polls, through the server
            described = client.describe_training_job(TrainingJobName="served")
            statuses = [t["Status"] for t in described["SecondaryStatusTransitions"]]
            return "Restarting" in statuses and described["SecondaryStatus"] == "Training"

        wait_until(training_again, "the server to restart the job")
        assert _worker_in(home, "served") not in (None, first_worker)
        client.stop_training_job(TrainingJobName="served")
        wait_until(
            lambda: (
                client.describe_training_job(TrainingJobName="served")["TrainingJobStatus"]
                == "Stopped"
            ),
            "the job to stop",
        )


def _worker_in(home: Path, name: str) -> int | None:
    """The worker of a job in another openmaker home, read from its database."""
    script = (
        "import os, sys\n"
        "from openmaker.settings import load_settings\n"
        "from openmaker.jobs.db import TrainingJob, sessions\n"
        "from openmaker.jobs.executor import local_process\n"
        "with sessions(load_settings())() as s:\n"
        "    job = s.get(TrainingJob, sys.argv[1])\n"
        "    print(local_process(job.worker)[0] if job.worker_ready else '')\n"
    )
    env = {**os.environ, "OPENMAKER_HOME": str(home)}
    out = subprocess.run(
        [sys.executable, "-c", script, name], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    return int(out) if out else None
