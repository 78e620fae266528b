"""A Pipe channel read by a registry image's non-root USER: the FIFOs are made by openmaker (as
root) and given to that user, so that the code can open them as it could on SageMaker."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from openmaker.runtime import unavailable_reason
from openmaker.training.service import TrainingJobs
from tests.helpers import get_object, put_objects, request, stop_and_wait, unique_name, wait_for
from tests.images_kit import Registry, busybox_image, missing_tools, push, running_registry

pytestmark = [
    pytest.mark.skipif(bool(missing_tools()), reason=f"needs {missing_tools()}"),
    pytest.mark.skipif(unavailable_reason() is not None, reason="needs the sandbox"),
]
READ = "cat /opt/ml/input/data/train_0 > /opt/ml/model/read; id -u >> /opt/ml/model/read"
PASSWD = "root:x:0:0:root:/root:/bin/sh\nalice:x:1234:2345::/home/alice:/bin/sh\n"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    folder = tmp_path_factory.mktemp("registry")
    with running_registry(folder / "registry") as running:
        entrypoint = [f"--config.entrypoint={part}" for part in ("/bin/sh", "-c", READ, "ep")]
        busybox_image(
            folder / "layout", "reader", files={"etc/passwd": PASSWD},
            config=(*entrypoint, "--config.user=alice"),
        )  # fmt: skip
        push(folder / "layout", "reader", running, "team/reader:1")
        yield running


def test_non_root_user_reads_its_pipe_channel(
    home: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(registry.auth_file))
    monkeypatch.setenv("OPENMAKER_INSECURE_REGISTRIES", registry.host)
    put_objects({"s3://data/pipe/a.csv": b"piped,rows\n"})
    jobs = TrainingJobs()
    name = unique_name("pipeuser")
    body = request(
        name, f"{registry.host}/team/reader:1", "s3://out/jobs", {"train": "s3://data/pipe/"}
    )
    body["AlgorithmSpecification"]["TrainingInputMode"] = "Pipe"
    try:
        jobs.create(body)
        described = wait_for(jobs, name, timeout=180)
    finally:
        stop_and_wait(jobs, [name])
    assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")
    artifacts = described["ModelArtifacts"]
    assert isinstance(artifacts, dict)
    data = get_object(artifacts["S3ModelArtifacts"])
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        member = tar.extractfile("read")
        assert member is not None
        assert member.read() == b"piped,rows\n1234\n"
