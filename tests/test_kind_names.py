"""Resources of different kinds may share a name (`estimator.deploy()` names its endpoint after
the training job): on a real `openmaker server`, a training job beside a processing job, then
an endpoint, of the same name, each with its own folder, worker.log, cgroups and bridge; ending
one (its worker killed, or deleted) leaves the other's alone."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from openmaker.runtime import unavailable_reason
from openmaker.runtime.network import jobs_with_networks
from openmaker.serving.limits import owners_with_cgroups as cgroups
from openmaker.training.host.limits import memory_cgroup_root
from tests.apiserver import ApiServer, running_api_server, stop_all
from tests.helpers import make_image, request, unique_name
from tests.process_helpers import kill, pid_of
from tests.test_endpoints import SERVE, Deployer
from tests.test_processing import processing_request

pytestmark = pytest.mark.skipif(
    unavailable_reason() is not None, reason="bridges and cgroups need the bwrap sandbox"
)

# Each job's code says it runs in its own host folder, then runs until stopped.
TRAIN = "#!/bin/sh\ntrap 'exit 0' TERM\ntouch /opt/ml/output/training-ran\n" + (
    "while true; do sleep 0.1; done\n"
)
PROCESS = """
import os, signal, time
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
open("/opt/ml/output/processing-ran", "w").close()
while True:
    time.sleep(0.1)
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ApiServer]:
    """A server of the test's own: its home's folders, bridges and cgroups are the test's."""
    home = tmp_path / "home"
    home.mkdir()
    with running_api_server(home) as api:
        yield api


def wait_until(condition: Callable[[], object], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def training_status(sagemaker: Any, name: str) -> str:
    return str(sagemaker.describe_training_job(TrainingJobName=name)["TrainingJobStatus"])


def processing_status(sagemaker: Any, name: str) -> str:
    return str(sagemaker.describe_processing_job(ProcessingJobName=name)["ProcessingJobStatus"])


def training_worker(home: Path, name: str) -> int:
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from openmaker.jobs.db import TrainingJob

    engine = create_engine(f"sqlite:///{home / 'openmaker.db'}")
    try:
        with Session(engine) as session:
            pid = pid_of(session.get(TrainingJob, name))
    finally:
        engine.dispose()
    assert pid is not None
    return pid


def test_a_training_and_a_processing_job_of_one_name_keep_their_things_apart(
    server: ApiServer, tmp_path: Path
) -> None:
    sagemaker, home = server.client("sagemaker"), server.home
    jobs = home / "jobs"
    name = unique_name("twin")
    training_image = make_image(tmp_path / "train-image", TRAIN)
    processing_image = tmp_path / "process-image"
    processing_image.mkdir()
    (processing_image / "process.py").write_text(PROCESS)
    entrypoint = ["python3", "/opt/program/process.py"]
    try:
        sagemaker.create_training_job(
            **request(name, str(training_image), (tmp_path / "out").as_uri())
        )
        sagemaker.create_processing_job(
            **processing_request(name, (str(processing_image), entrypoint))
        )
        trained = jobs / name / "algo-1" / "ml" / "output"
        processed = jobs / f"processing:{name}" / "algo-1" / "ml" / "output"
        wait_until(lambda: (trained / "training-ran").exists(), "the training job's code")
        wait_until(lambda: (processed / "processing-ran").exists(), "the processing job's code")
        # Each host folder is its own job's.
        assert not (trained / "processing-ran").exists()
        assert not (processed / "training-ran").exists()
        for key in (name, f"processing:{name}"):
            assert (jobs / key / "launch.json").is_file()
            assert (jobs / key / "worker.log").is_file()
        assert {name, f"processing:{name}"} <= set(jobs_with_networks(home))
        limited = memory_cgroup_root() is not None
        if limited:
            assert {name, f"processing:{name}"} <= set(cgroups(home))

        # The training job's worker killed: the sweep ends it and removes its things alone.
        kill(training_worker(home, name))
        wait_until(lambda: training_status(sagemaker, name) == "Failed", "the lost job's end")
        wait_until(lambda: name not in jobs_with_networks(home), "the lost job's bridge gone")
        assert not list((jobs / name).glob("algo-*"))
        if limited:
            wait_until(lambda: name not in cgroups(home), "the lost job's cgroups gone")
            assert f"processing:{name}" in cgroups(home)
        assert processing_status(sagemaker, name) == "InProgress"
        assert (processed / "processing-ran").exists()
        assert f"processing:{name}" in jobs_with_networks(home)

        sagemaker.stop_processing_job(ProcessingJobName=name)
        wait_until(lambda: processing_status(sagemaker, name) == "Stopped", "the stop")
        assert f"processing:{name}" not in jobs_with_networks(home)
        assert f"processing:{name}" not in cgroups(home)
        assert (jobs / name / "launch.json").is_file()  # the training job's, kept
    finally:
        stop_all(sagemaker, [name])
        with contextlib.suppress(ClientError):  # ended already
            sagemaker.stop_processing_job(ProcessingJobName=name)
        wait_until(lambda: processing_status(sagemaker, name) != "InProgress", "the stop")


def test_deleting_an_endpoint_named_after_a_running_training_job_leaves_the_job_alone(
    server: ApiServer, tmp_path: Path
) -> None:
    sagemaker, home = server.client("sagemaker"), server.home
    jobs = home / "jobs"
    deployer = Deployer(server, tmp_path)
    model = deployer.model(SERVE, {"weights.txt": b"w7\n"})
    name = unique_name("twin")
    training_image = make_image(tmp_path / "train-image", TRAIN)
    try:
        sagemaker.create_training_job(
            **request(name, str(training_image), (tmp_path / "out").as_uri())
        )
        # As `estimator.deploy()` names it: after the training job.
        sagemaker.create_endpoint_config(
            EndpointConfigName=name,
            ProductionVariants=[
                {
                    "VariantName": "AllTraffic",
                    "ModelName": model,
                    "InstanceType": "ml.m5.large",
                    "InitialInstanceCount": 1,
                }
            ],
        )
        deployer.endpoints.append(name)
        sagemaker.create_endpoint(EndpointName=name, EndpointConfigName=name)
        described = deployer.wait(name)
        assert described["EndpointStatus"] == "InService", described.get("FailureReason")
        answer = deployer.runtime.invoke_endpoint(EndpointName=name, Body=b"x")["Body"].read()
        assert answer == b"w7 hello x"
        trained = jobs / name / "algo-1" / "ml" / "output"
        wait_until(lambda: (trained / "training-ran").exists(), "the training job's code")
        assert (jobs / f"endpoint:{name}" / "worker.log").is_file()
        assert {name, f"endpoint:{name}"} <= set(jobs_with_networks(home))
        limited = memory_cgroup_root() is not None
        if limited:
            assert {name, f"endpoint:{name}"} <= set(cgroups(home))

        deployer.delete_all()
        assert f"endpoint:{name}" not in jobs_with_networks(home)
        assert training_status(sagemaker, name) == "InProgress"
        assert name in jobs_with_networks(home)
        assert (trained / "training-ran").exists()
        if limited:
            assert name in cgroups(home)
            assert f"endpoint:{name}" not in cgroups(home)
    finally:
        deployer.delete_all()
        stop_all(sagemaker, [name])
