"""Processing jobs from registry images: with no ContainerEntrypoint the image's own
ENTRYPOINT and CMD run, as SageMaker runs a processing image (`docker run IMAGE`), and
ContainerArguments take CMD's place. A real registry on loopback, real workers and sandboxes."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openmaker.processing.service import ProcessingJobs
from openmaker.runtime import unavailable_reason
from openmaker.settings import load_settings
from openmaker.shapes.errors import ValidationException
from tests.helpers import get_object, unique_name
from tests.images_kit import Registry, busybox_image, missing_tools, push, running_registry

pytestmark = [
    pytest.mark.skipif(bool(missing_tools()), reason=f"needs {missing_tools()}"),
    pytest.mark.skipif(unavailable_reason() is not None, reason="needs the sandbox"),
]

OUT = "/opt/ml/processing/out"
PROGRAM = f'echo "args:$*" > {OUT}/args'


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    folder = tmp_path_factory.mktemp("registry")
    with running_registry(folder / "registry") as running:
        entrypoint = [f"--config.entrypoint={part}" for part in ("/bin/sh", "-c", PROGRAM, "ep")]
        busybox_image(
            folder / "layout",
            "proc",
            config=(*entrypoint, "--config.cmd=from-cmd", "--config.cmd=second"),
        )
        push(folder / "layout", "proc", running, "team/proc:1")
        yield running


@pytest.fixture
def jobs(home: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch) -> ProcessingJobs:
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(registry.auth_file))
    monkeypatch.setenv("OPENMAKER_INSECURE_REGISTRIES", registry.host)
    return ProcessingJobs(load_settings())


def _run(jobs: ProcessingJobs, image: str, **app: Any) -> tuple[dict[str, Any], str]:
    name = unique_name("proc")
    output = {"S3Uri": f"s3://out/{name}", "LocalPath": OUT, "S3UploadMode": "EndOfJob"}
    jobs.create(
        {
            "ProcessingJobName": name,
            "RoleArn": "arn:aws:iam::123456789012:role/processing",
            "AppSpecification": {"ImageUri": image, **app},
            "ProcessingResources": {
                "ClusterConfig": {
                    "InstanceCount": 1, "InstanceType": "ml.m5.large", "VolumeSizeInGB": 1,
                }
            },
            "ProcessingOutputConfig": {"Outputs": [{"OutputName": "out", "S3Output": output}]},
        }
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while (described := jobs.describe(name))["ProcessingJobStatus"] == "InProgress":
            assert time.monotonic() < deadline, described
            time.sleep(0.1)
    finally:
        with contextlib.suppress(ValidationException):
            jobs.stop(name)
    return described, name


def test_a_registry_image_runs_its_own_entrypoint_and_cmd(
    jobs: ProcessingJobs, registry: Registry
) -> None:
    image = f"{registry.host}/team/proc:1"
    described, name = _run(jobs, image)
    assert described["ProcessingJobStatus"] == "Completed", described.get("FailureReason")
    assert get_object(f"s3://out/{name}/args") == b"args:from-cmd second\n"
    described, name = _run(jobs, image, ContainerArguments=["given"])
    assert described["ProcessingJobStatus"] == "Completed", described.get("FailureReason")
    assert get_object(f"s3://out/{name}/args") == b"args:given\n"  # in CMD's place


def test_a_local_image_still_needs_its_entrypoint(jobs: ProcessingJobs, tmp_path: Path) -> None:
    with pytest.raises(ValidationException, match=r"AppSpecification\.ContainerEntrypoint"):
        _run(jobs, str(tmp_path))
