"""The digests of algorithms' and model packages' images, through a real `openmaker server`
and a real registry on loopback (tests/images_kit.py): filled in when not given, a wrong one
refused naming its member, one given for a local image refused; a job trained with the
algorithm runs the image it was registered with after its tag has moved."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from openmaker.runtime import unavailable_reason
from tests.apiserver import ApiServer, running_api_server, stop_all
from tests.helpers import make_image, unique_name
from tests.images_kit import Registry, busybox_image, missing_tools, push, running_registry
from tests.test_algorithms import TRAIN, algorithm_request, job_request
from tests.test_algorithms_packages import inference
from tests.test_api import wait_done

pytestmark = pytest.mark.skipif(bool(missing_tools()), reason=f"needs {missing_tools()}")

WRONG = "sha256:" + "0" * 64


def _marking(word: str) -> tuple[str, ...]:
    """An image config whose program leaves `word` in its model."""
    script = f"echo {word} > /opt/ml/model/which"
    return ("--config.entrypoint=/bin/sh", "--config.entrypoint=-c",
            f"--config.entrypoint={script}")  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApiServer, Registry]]:
    folder = tmp_path_factory.mktemp("digests")
    with running_registry(folder / "registry") as registry:
        layout = folder / "layout"
        busybox_image(layout, "one", config=_marking("one"))
        busybox_image(layout, "two", base="one", config=_marking("two"))
        registry.layout = layout  # type: ignore[attr-defined]
        with running_api_server(
            folder / "home",
            REGISTRY_AUTH_FILE=str(registry.auth_file),
            OPENMAKER_INSECURE_REGISTRIES=registry.host,
        ) as server:
            yield server, registry


def _digest(registry: Registry, image: str) -> str:
    """The digest the registry serves `image` by, as skopeo reports it."""
    shown = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", f"--authfile={registry.auth_file}",
         f"docker://{image}"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return str(json.loads(shown)["Digest"])


def _pushed(registry: Registry, tag: str) -> str:
    """The layout's image `tag` pushed under a repository of its own; its reference."""
    repository = unique_name("team/algo")
    push(registry.layout, tag, registry, f"{repository}:latest")  # type: ignore[attr-defined]
    return f"{registry.host}/{repository}:latest"


def _refusal(call: Any, **request: Any) -> str:
    with pytest.raises(ClientError) as refused:
        call(**request)
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    return str(refused.value.response["Error"]["Message"])


@pytest.mark.skipif(unavailable_reason() is not None, reason="training needs the sandbox")
def test_an_algorithm_keeps_its_image_digest_and_runs_that_image(
    served: tuple[ApiServer, Registry],
) -> None:
    server, registry = served
    sagemaker, s3 = server.client("sagemaker"), server.client("s3")
    image = _pushed(registry, "one")
    first = _digest(registry, image)
    name = unique_name("pinned")
    request = algorithm_request(name, image)
    request["TrainingSpecification"]["TrainingImageDigest"] = WRONG
    message = _refusal(sagemaker.create_algorithm, **request)
    assert "'TrainingSpecification.TrainingImageDigest'" in message and first in message
    del request["TrainingSpecification"]["TrainingImageDigest"]
    sagemaker.create_algorithm(**request)
    described = sagemaker.describe_algorithm(AlgorithmName=name)
    assert described["TrainingSpecification"]["TrainingImageDigest"] == first

    # The tag moves on; the algorithm still trains with the image it was made with.
    push(registry.layout, "two", registry, image.split("/", 1)[1])  # type: ignore[attr-defined]
    assert _digest(registry, image) != first
    s3.create_bucket(Bucket=name)
    s3.put_object(Bucket=name, Key="in/a.csv", Body=b"1\n")
    job = unique_name("pinned-job")
    try:
        sagemaker.create_training_job(
            **job_request(job, name, f"s3://{name}/in/", f"s3://{name}/out")
        )
        ended = wait_done(sagemaker, job)
        assert ended["TrainingJobStatus"] == "Completed", ended.get("FailureReason")
        assert ended["AlgorithmSpecification"]["TrainingImage"] == f"{image}@{first}"
        model = s3.get_object(Bucket=name, Key=f"out/{job}/output/model.tar.gz")["Body"].read()
        with tarfile.open(fileobj=io.BytesIO(model), mode="r:gz") as tar:
            which = tar.extractfile("which")
            assert which is not None and which.read() == b"one\n"
    finally:
        stop_all(sagemaker, [job])


def test_a_digest_given_with_the_image_is_checked_not_looked_up(
    served: tuple[ApiServer, Registry],
) -> None:
    server, registry = served
    sagemaker = server.client("sagemaker")
    image = _pushed(registry, "one")
    actual = _digest(registry, image)
    name = unique_name("given")
    request = algorithm_request(name, image)
    request["TrainingSpecification"]["TrainingImageDigest"] = actual.upper().replace("SHA", "sha")
    sagemaker.create_algorithm(**request)
    spec = sagemaker.describe_algorithm(AlgorithmName=name)["TrainingSpecification"]
    assert spec["TrainingImageDigest"].lower() == actual


def test_a_digest_for_a_local_image_or_a_missing_image_is_refused(
    served: tuple[ApiServer, Registry],
) -> None:
    server, registry = served
    sagemaker = server.client("sagemaker")
    folder = make_image(server.home.parent / unique_name("folder"), TRAIN)
    request = algorithm_request(unique_name("local"), str(folder))
    request["TrainingSpecification"]["TrainingImageDigest"] = WRONG
    message = _refusal(sagemaker.create_algorithm, **request)
    assert "'TrainingSpecification.TrainingImageDigest'" in message
    assert "no registry digest" in message
    missing = algorithm_request(unique_name("missing"), f"{registry.host}/team/none:1")
    message = _refusal(sagemaker.create_algorithm, **missing)
    assert "'TrainingSpecification.TrainingImage'" in message
    # Nothing was made of either.
    names = [a["AlgorithmName"] for a in sagemaker.list_algorithms()["AlgorithmSummaryList"]]
    assert request["AlgorithmName"] not in names and missing["AlgorithmName"] not in names


def test_a_model_package_checks_and_fills_its_containers_digests(
    served: tuple[ApiServer, Registry],
) -> None:
    server, registry = served
    sagemaker = server.client("sagemaker")
    image = _pushed(registry, "one")
    actual = _digest(registry, image)
    spec = inference(image, "s3://models/m.tar.gz")
    spec["Containers"][0]["ImageDigest"] = WRONG
    name = unique_name("pkg")
    message = _refusal(
        sagemaker.create_model_package, ModelPackageName=name, InferenceSpecification=spec
    )
    assert "'InferenceSpecification.Containers.1.member.ImageDigest'" in message
    del spec["Containers"][0]["ImageDigest"]
    sagemaker.create_model_package(ModelPackageName=name, InferenceSpecification=spec)
    described = sagemaker.describe_model_package(ModelPackageName=name)
    assert described["InferenceSpecification"]["Containers"][0]["ImageDigest"] == actual
    spec["Containers"][0]["ImageDigest"] = WRONG
    arn = described["ModelPackageArn"]
    message = _refusal(
        sagemaker.update_model_package, ModelPackageArn=arn, InferenceSpecification=spec
    )
    assert "'InferenceSpecification.Containers.1.member.ImageDigest'" in message
    # A model that names the package serves that image, by its digest.
    model = unique_name("pkg-model")
    sagemaker.create_model(
        ModelName=model,
        PrimaryContainer={"ModelPackageName": name},
        ExecutionRoleArn="arn:aws:iam::000000000000:role/openmaker",
    )
    served_image = sagemaker.describe_model(ModelName=model)["PrimaryContainer"]["Image"]
    assert served_image == f"{image}@{actual}"
