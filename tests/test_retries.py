"""RetryStrategy: jobs killed from outside restart with their checkpoints; the code's own
failures never do. Real workers, real sandboxes, real SIGKILLs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from openmaker.jobs.db import TrainingJob
from openmaker.jobs.executor import local_process, local_reference, process_lost, process_start_time
from openmaker.training.host.limits import jobs_with_cgroups
from openmaker.training.service import TrainingJobs
from tests.helpers import get_object, make_image, request, wait_for
from tests.process_helpers import (
    code_process,
    kill,
    wait_for_no_processes,
    wait_until,
    worker_pid,
)
from tests.s3server import S3Server

STEPS = 25

# Counts steps; after each, writes its state as a checkpoint (a temporary file renamed over the
# last one, so a checkpoint is never half written), and resumes from the last one at start.
COUNTER = f"""#!{sys.executable}
import json, os, pathlib, time
folder = pathlib.Path("/opt/ml/checkpoints")
saved = folder / "state.json"
state = json.loads(saved.read_text()) if saved.exists() else {{"last": -1, "done": []}}
state.setdefault("resumed_from", []).append(state["last"])
print("resuming after step", state["last"], flush=True)
for step in range(state["last"] + 1, {STEPS}):
    time.sleep(float(os.environ.get("STEP_SECONDS", "0.15")))
    state["done"].append(step)
    state["last"] = step
    temporary = folder / "state.json.tmp"
    temporary.write_text(json.dumps(state))
    os.replace(temporary, saved)
    print("step", step, flush=True)
(pathlib.Path("/opt/ml/model") / "state.json").write_text(json.dumps(state))
"""


def _counter_job(tmp_path: Path, name: str, checkpoints: str, retries: int | None) -> dict:
    image = make_image(tmp_path / "image", COUNTER)
    body = request(name, str(image), f"{checkpoints}-output")
    body["CheckpointConfig"] = {"S3Uri": checkpoints}
    if retries is not None:
        body["RetryStrategy"] = {"MaximumRetryAttempts": retries}
    return body


def _checkpointed_step(uri: str) -> int:
    try:
        return int(json.loads(get_object(uri))["last"])
    except (FileNotFoundError, ValueError, KeyError):
        return -1


def _statuses(description: dict[str, Any]) -> list[str]:
    return [t["Status"] for t in description["SecondaryStatusTransitions"]]


def _final_state(description: dict[str, Any]) -> dict[str, Any]:
    import io
    import tarfile

    data = get_object(description["ModelArtifacts"]["S3ModelArtifacts"])
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        member = tar.extractfile("state.json")
        assert member is not None
        return json.loads(member.read())


def _kill_code_after_a_checkpoint(jobs: TrainingJobs, name: str, checkpoint_uri: str) -> int:
    """SIGKILL the job's code once a checkpoint of step 3 or later is in the store."""
    wait_until(lambda: _checkpointed_step(checkpoint_uri) >= 3, "a checkpoint in the store")
    pid = code_process(name)
    assert pid is not None
    kill(pid)
    return _checkpointed_step(checkpoint_uri)


def test_code_killed_from_outside_restarts_and_resumes_from_its_checkpoint(
    tmp_path: Path, home: Path, s3_env: S3Server
) -> None:
    s3_env.make_bucket("killed-code")
    jobs = TrainingJobs()
    checkpoints = "s3://killed-code/checkpoints"
    jobs.create(_counter_job(tmp_path, "killed-code", checkpoints, retries=2))
    seen = _kill_code_after_a_checkpoint(jobs, "killed-code", f"{checkpoints}/state.json")

    description = wait_for(jobs, "killed-code")
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    statuses = _statuses(description)
    assert statuses.count("Restarting") == 1
    # SageMaker: a retried job goes back to Starting.
    assert statuses[statuses.index("Restarting") + 1] == "Starting"
    restarting = next(
        t for t in description["SecondaryStatusTransitions"] if t["Status"] == "Restarting"
    )
    assert "killed (SIGKILL) from outside the job" in restarting["StatusMessage"]
    assert "attempt 2 of 3" in restarting["StatusMessage"]

    final = _final_state(description)
    # Every step exactly once along the checkpoints' line, and the second attempt went on
    # from a checkpoint at least as recent as the one seen before the kill.
    assert final["done"] == list(range(STEPS))
    first, resumed = final["resumed_from"]
    assert first == -1
    assert seen <= resumed < STEPS - 1
    wait_for_no_processes("killed-code")


def test_worker_killed_restarts_from_the_checkpoints_synced_while_it_ran(
    tmp_path: Path, home: Path, s3_env: S3Server
) -> None:
    """The worker dies with its hosts: only what the continuous sync uploaded is left."""
    s3_env.make_bucket("killed-worker")
    jobs = TrainingJobs()
    checkpoints = "s3://killed-worker/checkpoints"
    jobs.create(_counter_job(tmp_path, "killed-worker", checkpoints, retries=1))
    uri = f"{checkpoints}/state.json"
    wait_until(lambda: _checkpointed_step(uri) >= 3, "a checkpoint synced while training")
    pid = worker_pid(jobs, "killed-worker")
    assert pid is not None
    kill(pid)
    seen = _checkpointed_step(uri)

    description = wait_for(jobs, "killed-worker")  # describing notices the lost worker
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    assert _statuses(description).count("Restarting") == 1
    final = _final_state(description)
    assert final["done"] == list(range(STEPS))
    assert final["resumed_from"][0] == -1
    assert final["resumed_from"][1] >= seen >= 3


def test_without_retry_strategy_a_kill_from_outside_fails_the_job(
    tmp_path: Path, home: Path
) -> None:
    jobs = TrainingJobs()
    checkpoints = "s3://ckpt/no-retry"
    jobs.create(_counter_job(tmp_path, "no-retry", checkpoints, retries=None))
    _kill_code_after_a_checkpoint(jobs, "no-retry", f"{checkpoints}/state.json")
    description = wait_for(jobs, "no-retry")
    assert description["TrainingJobStatus"] == "Failed"
    assert description["FailureReason"] == (
        "InternalServerError: the training program of host algo-1 was killed (SIGKILL) from "
        "outside the job, as when an instance fails"
    )
    assert "Restarting" not in _statuses(description)


def test_retries_run_out_after_maximum_retry_attempts(tmp_path: Path, home: Path) -> None:
    jobs = TrainingJobs()
    checkpoints = "s3://ckpt/run-out"
    jobs.create(_counter_job(tmp_path, "run-out", checkpoints, retries=1))
    _kill_code_after_a_checkpoint(jobs, "run-out", f"{checkpoints}/state.json")
    # The second attempt resumes after step 3 or later; kill it once it has gone further.
    first = _checkpointed_step(f"{checkpoints}/state.json")
    wait_until(
        lambda: (
            _checkpointed_step(f"{checkpoints}/state.json") > first
            and code_process("run-out") is not None
        ),
        "the second attempt to checkpoint",
    )
    pid = code_process("run-out")
    assert pid is not None
    kill(pid)
    description = wait_for(jobs, "run-out")
    assert description["TrainingJobStatus"] == "Failed"
    assert description["FailureReason"].startswith("InternalServerError: the training program")
    assert description["FailureReason"].endswith(
        "; the job was retried 1 times (RetryStrategy.MaximumRetryAttempts)"
    )
    assert _statuses(description).count("Restarting") == 1


def test_the_codes_own_failure_is_never_retried(tmp_path: Path, home: Path) -> None:
    script = "#!/bin/sh\necho 'bad data' > /opt/ml/output/failure\nexit 3\n"
    image = make_image(tmp_path / "image", script)
    jobs = TrainingJobs()
    body = request("own-failure", str(image), "s3://out/models")
    body["RetryStrategy"] = {"MaximumRetryAttempts": 3}
    jobs.create(body)
    description = wait_for(jobs, "own-failure")
    assert description["TrainingJobStatus"] == "Failed"
    assert description["FailureReason"] == "AlgorithmError: bad data\n"
    assert "Restarting" not in _statuses(description)


def test_a_reused_pid_is_not_taken_for_the_worker(tmp_path: Path, home: Path) -> None:
    image = make_image(tmp_path / "image", "#!/bin/sh\necho ready\nexec sleep 600\n")
    jobs = TrainingJobs()
    jobs.create(request("reused-pid", str(image), "s3://out/models"))
    wait_until(
        lambda: code_process("reused-pid", "sleep") is not None and _ready(jobs, "reused-pid"),
        "the code to start and its worker to take the job over",
    )
    pid = worker_pid(jobs, "reused-pid")
    assert pid is not None
    kill(pid)
    wait_until(lambda: process_lost(pid), "the worker to end")
    # Another process now has the PID the database holds for the worker (as after a reboot,
    # or after PIDs wrapped around): only the start time tells them apart.
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        with jobs.writers() as session:
            job = session.get(TrainingJob, "reused-pid")
            assert job is not None
            assert job.worker is not None
            process = local_process(job.worker)
            assert process is not None and process[1] is not None
            assert process[1] != process_start_time(stranger.pid)
            job.worker = local_reference(stranger.pid, process[1])
            session.commit()
        description = wait_for(jobs, "reused-pid", timeout=30)
        assert description["TrainingJobStatus"] == "Failed"
        assert (
            f"(process {stranger.pid}) ended without finishing it" in (description["FailureReason"])
        )
        assert stranger.poll() is None  # the stranger was left alone
    finally:
        stranger.kill()
        stranger.wait()
    wait_for_no_processes("reused-pid")

    def swept() -> bool:
        # A command's sweep removes what the dead worker's hosts left; a cgroup whose last
        # process the kernel has not yet let go of (a loaded machine) is the next one's.
        TrainingJobs()
        return "reused-pid" not in jobs_with_cgroups(home)

    wait_until(swept, "a command to remove the dead worker's cgroups", 30)
    assert not list((home / "jobs" / "reused-pid").glob("algo-*"))


def _ready(jobs: TrainingJobs, name: str) -> bool:
    with jobs.sessions() as session:
        job = session.get(TrainingJob, name)
        return job is not None and job.worker_ready
