"""SageMaker framework images for real: one that can be pulled (here from a registries.conf
mirror serving it under its ECR name, ECR itself denying a token) runs as it is; one that
cannot falls back to this machine standing in for it, and the status says which ran. A real
registry on loopback, real workers and sandboxes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openmaker.runtime import unavailable_reason
from openmaker.training.service import TrainingJobs
from tests.helpers import request, stop_and_wait, unique_name, wait_for
from tests.images_kit import (
    EcrStandIn,
    Registry,
    busybox_image,
    missing_tools,
    push,
    running_registry,
)
from tests.test_image_jobs import _model

pytestmark = [
    pytest.mark.skipif(bool(missing_tools()), reason=f"needs {missing_tools()}"),
    pytest.mark.skipif(unavailable_reason() is not None, reason="needs the sandbox"),
]
ECR = "763104351884.dkr.ecr.us-east-1.amazonaws.com"  # SageMaker's deep learning containers
IMAGE = f"{ECR}/pytorch-training:2.1.0-cpu-py310"
# Says where it ran: the image holds /srv/marker, this machine does not.
WHERE = "cat /srv/marker > /opt/ml/model/where 2>/dev/null || echo machine > /opt/ml/model/where"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    folder = tmp_path_factory.mktemp("registry")
    with running_registry(folder / "registry") as running:
        busybox_image(folder / "layout", "fw", files={"srv/marker": "from-image\n"})
        push(folder / "layout", "fw", running, "pytorch-training:2.1.0-cpu-py310")
        yield running


@pytest.fixture
def jobs(
    home: Path, tmp_path: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TrainingJobs]:
    conf = tmp_path / "registries.conf"
    conf.write_text(
        f'[[registry]]\nprefix = "{ECR}"\nlocation = "{ECR}"\n'
        f'[[registry.mirror]]\nlocation = "{registry.host}"\ninsecure = true\n'
    )
    ecr = EcrStandIn("unused")
    ecr.deny = True  # no token for SageMaker's account: the mirror has credentials of its own
    monkeypatch.setenv("AWS_ENDPOINT_URL_ECR", ecr.url)
    monkeypatch.setenv("OPENMAKER_REGISTRIES_CONF", str(conf))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(registry.auth_file))
    monkeypatch.setenv("OPENMAKER_INSECURE_REGISTRIES", registry.host)
    try:
        yield TrainingJobs()
    finally:
        ecr.close()


def _run(jobs: TrainingJobs, image: str) -> dict[str, Any]:
    name = unique_name("fw")
    body = request(name, image, "s3://out/jobs")
    body["AlgorithmSpecification"]["ContainerEntrypoint"] = ["/bin/sh", "-c", WHERE]
    try:
        jobs.create(body)
        return wait_for(jobs, name, timeout=180)
    finally:
        stop_and_wait(jobs, [name])


def _message(description: dict[str, Any], status: str) -> str:
    return "\n".join(
        t.get("StatusMessage", "")
        for t in description["SecondaryStatusTransitions"]
        if t["Status"] == status
    )


def test_a_framework_image_that_can_be_pulled_runs_as_it_is(jobs: TrainingJobs) -> None:
    described = _run(jobs, IMAGE)
    assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")
    assert _model(described) == {"where": b"from-image\n"}
    assert f"SageMaker's PyTorch image {IMAGE} (sha256:" in _message(described, "Training")
    assert "run as it is" in _message(described, "Training")


def test_a_framework_image_that_cannot_be_pulled_is_stood_in_for(jobs: TrainingJobs) -> None:
    missing = f"{ECR}/pytorch-training:1.0.0-cpu-py310"  # neither the mirror nor ECR has it
    described = _run(jobs, missing)
    assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")
    assert _model(described) == {"where": b"machine\n"}
    training = _message(described, "Training")
    assert f"PyTorch image {missing} stood in for by its ContainerEntrypoint" in training
    assert "it could not be pulled: the registry has no such image" in training
    assert "not pulled" in _message(described, "Downloading")
