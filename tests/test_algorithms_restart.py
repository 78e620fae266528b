"""An algorithm's validation under way when `openmaker server` is killed (`kill -9`) is carried
on by the next server: its training job runs on meanwhile, and the algorithm ends Completed."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from openmaker.runtime import unavailable_reason
from tests.apiserver import running_api_server
from tests.helpers import make_image, unique_name
from tests.process_helpers import (
    code_process,
    job_processes,
    kill,
    processes_mentioning,
    wait_until,
)
from tests.test_algorithms import algorithm_request, profile

# Runs a little while (the server is killed meanwhile), then leaves a model.
SLOW_TRAIN = "#!/bin/sh\nsleep 3\necho ok > /opt/ml/model/ok.txt\n"


def _status(home: Path, name: str) -> str:
    """The algorithm's status in the database, read with no server running."""
    with contextlib.closing(sqlite3.connect(home / "openmaker.db")) as db:
        (status,) = db.execute("SELECT status FROM algorithms WHERE name = ?", (name,)).fetchone()
    return str(status)


@pytest.mark.skipif(unavailable_reason() is not None, reason="validation needs the sandbox")
def test_a_validation_under_way_survives_a_server_restart(tmp_path: Path) -> None:
    home, data = tmp_path / "home", tmp_path / "data"
    home.mkdir()
    data.mkdir()
    (data / "a.csv").write_text("1,2\n")
    image = make_image(tmp_path / "image", SLOW_TRAIN)
    name = unique_name("restarted")
    # Data and outputs in folders: the next server's embedded store is on another port.
    trains = profile("trains", "3", data.as_uri(), (tmp_path / "out").as_uri(), transform=False)
    request = algorithm_request(
        name,
        str(image),
        ValidationSpecification={
            "ValidationRole": "arn:aws:iam::123456789012:role/SageMakerRole",
            "ValidationProfiles": [trains],
        },
    )
    job = ""
    try:
        with running_api_server(home) as server:
            sagemaker = server.client("sagemaker")
            sagemaker.create_algorithm(**request)

            def training() -> bool:
                nonlocal job
                sagemaker.describe_algorithm(AlgorithmName=name)  # moves validation on
                found = sagemaker.list_training_jobs(NameContains=name)["TrainingJobSummaries"]
                job = found[0]["TrainingJobName"] if found else ""
                return bool(job) and code_process(job) is not None

            wait_until(training, "the validation's training job to run")
            kill(server.process.pid)
            server.process.wait()
        assert _status(home, name) == "InProgress"
        (home / "server.json").unlink()  # kill -9 leaves it behind

        with running_api_server(home) as server:
            sagemaker = server.client("sagemaker")

            def validated() -> bool:
                described = sagemaker.describe_algorithm(AlgorithmName=name)
                return described["AlgorithmStatus"] in ("Completed", "Failed")

            wait_until(validated, "the validation to end", timeout=120)
            described = sagemaker.describe_algorithm(AlgorithmName=name)
            assert described["AlgorithmStatus"] == "Completed", described
            assert described["AlgorithmStatusDetails"]["ValidationStatuses"] == [
                {"Name": "trains", "Status": "Completed"}
            ]
            assert (tmp_path / "out" / job / "output" / "model.tar.gz").is_file()
    finally:
        # What the killed server left (its embedded store's rclone outlives kill -9).
        for pid in (job_processes(job) if job else []) + processes_mentioning(str(home)):
            with contextlib.suppress(ProcessLookupError):
                kill(pid)
