"""Training jobs from registry images: a real registry on loopback (tests/images_kit.py), real
workers and sandboxes. The image is pulled on the host, run as Docker would run it (its
ENTRYPOINT with `train`, its ENV, WORKDIR and USER) with /opt/ml writable by its user."""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from openmaker.runtime import unavailable_reason
from openmaker.shapes.errors import ValidationException
from openmaker.training.service import TrainingJobs
from tests.helpers import (
    get_object,
    put_objects,
    request,
    stop_and_wait,
    unique_name,
    wait_for,
)
from tests.images_kit import (
    Registry,
    busybox_image,
    layer_digests,
    missing_tools,
    push,
    running_registry,
)

pytestmark = [
    pytest.mark.skipif(bool(missing_tools()), reason=f"needs {missing_tools()}"),
    pytest.mark.skipif(unavailable_reason() is not None, reason="needs the sandbox"),
]

# The image's program: what it was started with and as whom, written where SageMaker keeps
# the model (a path it hard-codes, as bring-your-own programs do).
REPORT = (
    'm=/opt/ml/model; echo "args:$*" > $m/report; echo "ids:$(id -u):$(id -g)" >> $m/report; '
    'echo "cwd:$(pwd)" >> $m/report; echo "env:$A:$B:$HOME:$TRAINING_JOB_NAME" >> $m/report; '
    "cat /opt/ml/input/data/train/x.csv >> $m/report; mkdir $m/sub && echo w > $m/sub/w; "
    "echo out > /opt/ml/output/data/extra.txt"
)
PASSWD = "root:x:0:0:root:/root:/bin/sh\nalice:x:1234:2345::/home/alice:/bin/sh\n"
GROUP = "root:x:0:\nteam:x:2345:\n"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    folder = tmp_path_factory.mktemp("registry")
    with running_registry(folder / "registry") as running:
        layout = folder / "layout"
        entrypoint = [f"--config.entrypoint={part}" for part in ("/bin/sh", "-c", REPORT, "ep")]
        busybox_image(
            layout,
            "algo",
            files={"etc/passwd": PASSWD, "etc/group": GROUP},
            config=(*entrypoint, "--config.cmd=not-this", "--config.env=A=image",
                    "--config.env=B=image", "--config.workingdir=/srv/work",
                    "--config.user=alice"),
        )  # fmt: skip
        push(layout, "algo", running, "team/algo:1")
        running.layout = layout  # type: ignore[attr-defined]
        yield running


@pytest.fixture
def jobs(home: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch) -> TrainingJobs:
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(registry.auth_file))
    monkeypatch.setenv("OPENMAKER_INSECURE_REGISTRIES", registry.host)
    put_objects({"s3://data/train/x.csv": b"1,2,3\n"})
    return TrainingJobs()


def _run(jobs: TrainingJobs, image: str, **algorithm: object) -> dict[str, object]:
    name = unique_name("img")
    body = request(name, image, "s3://out/jobs", {"train": "s3://data/train/"})
    body["AlgorithmSpecification"].update(algorithm)
    body["Environment"] = {"B": "request"}
    try:
        jobs.create(body)
        return wait_for(jobs, name, timeout=180)
    finally:
        stop_and_wait(jobs, [name])


def _model(description: dict[str, object]) -> dict[str, bytes]:
    artifacts = description["ModelArtifacts"]
    assert isinstance(artifacts, dict)
    data = get_object(artifacts["S3ModelArtifacts"])
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def _downloading(description: dict[str, object]) -> str:
    transitions = description["SecondaryStatusTransitions"]
    assert isinstance(transitions, list)
    return next(t["StatusMessage"] for t in transitions if t["Status"] == "Downloading")


def test_registry_image_by_tag_then_digest(jobs: TrainingJobs, registry: Registry) -> None:
    description = _run(jobs, f"{registry.host}/team/algo:1")
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    report = _model(description)["report"].decode().splitlines()
    assert report[:3] == ["args:train", "ids:1234:2345", "cwd:/srv/work"]
    name = description["TrainingJobName"]
    assert report[3] == f"env:image:request:/home/alice:{name}"  # ENV under the request's
    assert report[4] == "1,2,3"  # its channel, read as the image's user
    assert _model(description)["sub/w"] == b"w\n"
    message = _downloading(description)
    assert message.startswith(f"Downloading the training image {registry.host}/team/algo:1")
    digest = re.search(r"done \((sha256:[0-9a-f]{64})\)", message)
    assert digest is not None, message
    # By digest: the same image, nothing pulled again.
    pinned = _run(jobs, f"{registry.host}/team/algo@{digest[1]}")
    assert pinned["TrainingJobStatus"] == "Completed", pinned.get("FailureReason")
    assert _model(pinned)["report"].decode().startswith("args:train\n")
    layer = layer_digests(registry.layout, "algo")[0]  # type: ignore[attr-defined]
    assert registry.blob_fetches(layer) == 1  # pulled once, by the first job
    output = get_object(f"s3://out/jobs/{name}/output/output.tar.gz")
    with tarfile.open(fileobj=io.BytesIO(output), mode="r:gz") as tar:
        assert "extra.txt" in tar.getnames()


def test_container_entrypoint_and_arguments_override(
    jobs: TrainingJobs, registry: Registry
) -> None:
    image = f"{registry.host}/team/algo:1"
    arguments = _run(jobs, image, ContainerArguments=["alpha", "beta"])
    assert arguments["TrainingJobStatus"] == "Completed", arguments.get("FailureReason")
    assert _model(arguments)["report"].startswith(b"args:alpha beta\n")  # in `train`'s place
    script = 'echo "$* $(id -u)" > /opt/ml/model/own'
    entry = _run(
        jobs,
        image,
        ContainerEntrypoint=["/bin/sh", "-c", script, "sh"],
        ContainerArguments=["x", "y"],
    )
    assert entry["TrainingJobStatus"] == "Completed", entry.get("FailureReason")
    assert _model(entry) == {"own": b"x y 1234\n"}  # the image's CMD and `train` dropped


def test_unknown_image_fails_the_job_with_the_registrys_reason(
    jobs: TrainingJobs, registry: Registry
) -> None:
    description = _run(jobs, f"{registry.host}/team/missing:1")
    assert description["TrainingJobStatus"] == "Failed"
    reason = str(description["FailureReason"])
    assert reason.startswith(f"ClientError: Cannot pull {registry.host}/team/missing:1: ")
    assert "no such image" in reason and "Traceback" not in reason


@pytest.mark.parametrize(
    "image",
    ["registry.example.com/Team/Algo:1", "algo:bad tag", "host:5000/algo@sha256:short"],
)
def test_malformed_reference_is_refused_at_create(home: Path, image: str) -> None:
    with pytest.raises(ValidationException, match=r"AlgorithmSpecification\.TrainingImage"):
        TrainingJobs().create(request("bad-ref", image, "s3://out/jobs"))
    assert TrainingJobs().list() == []
