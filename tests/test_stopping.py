"""Stopping a job ends its whole process tree, and what it left by then is still uploaded."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
import tarfile
import uuid
from pathlib import Path

import pytest

from openmaker.training.service import TrainingJobs
from tests.helpers import (
    get_object,
    log_text,
    make_image,
    request,
    stop_and_wait,
    wait_for,
    wait_for_log,
)
from tests.process_helpers import processes_mentioning

# The code ignores SIGTERM and leaves a daemon behind: double-forked into a session of its own,
# ignoring SIGTERM too, holding the code's output open. MODE "stop" then waits to be stopped;
# "exit" ends at once, leaving the daemon.
DAEMONIZING = """#!{python}
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)",
            "{marker}"])
    os._exit(0)
os.wait()
print("daemon started", flush=True)
while "{mode}" == "stop":
    time.sleep(0.1)
"""


def _survivors(marker: str) -> list[int]:
    """The daemon, by the marker in its own argv."""
    return processes_mentioning(marker)


@pytest.mark.parametrize("sandbox", ["bwrap", "none"])
@pytest.mark.parametrize("mode", ["stop", "exit"])
def test_nothing_the_code_started_survives_the_job(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch, sandbox: str, mode: str
) -> None:
    if sandbox == "none":
        monkeypatch.setenv("OPENMAKER_SANDBOX", "none")
    monkeypatch.setenv("OPENMAKER_STOP_GRACE_SECONDS", "1")
    marker = f"openmaker-daemon-{uuid.uuid4().hex}"
    script = DAEMONIZING.format(python=sys.executable, marker=marker, mode=mode)
    image = make_image(tmp_path / "image", script)
    jobs = TrainingJobs()
    name = f"daemon-{mode}"
    try:
        jobs.create(request(name, str(image), "s3://b/out"))
        if mode == "stop":
            wait_for_log(jobs, name, "daemon started")
            assert _survivors(marker), "the daemon should be running while the job runs"
            jobs.stop(name)
        description = wait_for(jobs, name, timeout=60)
        expected = "Stopped" if mode == "stop" else "Completed"
        assert description["TrainingJobStatus"] == expected, description.get("FailureReason")
        assert "daemon started" in log_text(jobs, name)
        assert _survivors(marker) == []
    finally:
        stop_and_wait(jobs, [name])
        for pid in _survivors(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("limit", ["stop", "max-runtime"])
def test_checkpoints_written_during_the_grace_period_are_uploaded(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch, limit: str
) -> None:
    monkeypatch.setenv("OPENMAKER_STOP_GRACE_SECONDS", "30")
    script = (
        "#!/bin/sh\n"
        "on_term() {\n"
        "  echo 'step 7' > /opt/ml/checkpoints/at-term.txt\n"
        "  echo partial > /opt/ml/model/partial.txt\n"
        "  echo 'saved on SIGTERM'; exit 0\n"
        "}\n"
        "trap on_term TERM\n"
        "echo 'step 1' > /opt/ml/checkpoints/early.txt\n"
        "echo ready\n"
        "while true; do sleep 0.1; done\n"
    )
    image = make_image(tmp_path / "image", script)
    jobs = TrainingJobs()
    name = f"grace-{limit}"
    body = request(name, str(image), "s3://b/out", CheckpointConfig={"S3Uri": f"s3://ck/{name}"})
    if limit == "max-runtime":
        body["StoppingCondition"] = {"MaxRuntimeInSeconds": 3}
    jobs.create(body)
    if limit == "stop":
        wait_for_log(jobs, name, "ready")
        jobs.stop(name)
    description = wait_for(jobs, name, timeout=60)
    assert description["TrainingJobStatus"] == "Stopped"
    statuses = [t["Status"] for t in description["SecondaryStatusTransitions"]]
    if limit == "stop":
        assert statuses[-2:] == ["Stopping", "Stopped"]
    else:
        assert statuses[-1] == "MaxRuntimeExceeded"
    assert "saved on SIGTERM" in log_text(jobs, name)
    assert get_object(f"s3://ck/{name}/early.txt") == b"step 1\n"
    assert get_object(f"s3://ck/{name}/at-term.txt") == b"step 7\n"
    archive = get_object(description["ModelArtifacts"]["S3ModelArtifacts"])
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        assert tar.getnames() == ["partial.txt"]
