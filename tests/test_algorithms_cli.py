"""The CLI's create and delete commands for algorithms, model packages and their groups, run as
a person runs them against a real `openmaker server`: a request file in, the ARN out; a refused
request told in one line naming the member, with no traceback."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from tests.apiserver import ApiServer, openmaker_command
from tests.helpers import unique_name
from tests.test_algorithms import algorithm_request
from tests.test_algorithms_packages import inference


def _cli(server: ApiServer, *args: str, local: bool = False) -> subprocess.CompletedProcess[str]:
    """The command through the server, or (`local`) on the server's home without it."""
    env = {**os.environ, **server.env}
    if local:
        env = {k: v for k, v in env.items() if not k.startswith("AWS_ENDPOINT_URL")}
        env["OPENMAKER_HOME"] = str(server.home)
    return subprocess.run([*openmaker_command(), *args], env=env, capture_output=True, text=True)


def _ok(server: ApiServer, *args: str) -> str:
    done = _cli(server, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _refused(server: ApiServer, *args: str) -> str:
    done = _cli(server, *args)
    assert done.returncode == 1, done.stdout
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr, done.stderr
    return done.stderr


def _file(folder: Path, request: dict[str, Any]) -> str:
    path = folder / f"{unique_name('request')}.json"
    path.write_text(json.dumps(request))
    return str(path)


def test_an_algorithm_is_created_from_a_request_file_and_deleted(
    api_server: ApiServer, tmp_path: Path
) -> None:
    name = unique_name("cli-made")
    request = algorithm_request(name, str(tmp_path))
    printed = _ok(api_server, "algorithms", "create", "--request", _file(tmp_path, request))
    assert f"Created algorithm {name}" in printed and f":algorithm/{name}" in printed
    sagemaker = api_server.client("sagemaker")
    assert sagemaker.describe_algorithm(AlgorithmName=name)["AlgorithmStatus"] == "Completed"
    again = _refused(api_server, "algorithms", "create", "--request", _file(tmp_path, request))
    assert "already existing" in again

    request["AlgorithmName"] = unique_name("cli-bad")
    request["TrainingSpecification"]["SupportedHyperParameters"][0]["Type"] = "Number"
    said = _refused(api_server, "algorithms", "create", "--request", _file(tmp_path, request))
    assert "TrainingSpecification.SupportedHyperParameters" in said
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert "cannot read the request" in _refused(
        api_server, "algorithms", "create", "--request", str(broken)
    )

    assert f"Deleted {name}" in _ok(api_server, "algorithms", "delete", name)
    # On this machine's home, without the server: the server sees it.
    request["AlgorithmName"] = name
    request["TrainingSpecification"]["SupportedHyperParameters"][0]["Type"] = "Integer"
    made = _cli(api_server, "algorithms", "create", "--request", _file(tmp_path, request),
                local=True)  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert sagemaker.describe_algorithm(AlgorithmName=name)["AlgorithmName"] == name


def test_a_group_and_its_version_are_created_and_deleted(
    api_server: ApiServer, tmp_path: Path
) -> None:
    group = unique_name("cli-group")
    made = _ok(api_server, "model-package-groups", "create", group, "--description", "rankers")
    assert f":model-package-group/{group}" in made
    assert group in _ok(api_server, "model-package-groups", "list")
    request = {
        "ModelPackageGroupName": group,
        "InferenceSpecification": inference(str(tmp_path), "s3://models/m.tar.gz"),
    }
    printed = _ok(api_server, "model-packages", "create", "--request", _file(tmp_path, request))
    assert f":model-package/{group}/1" in printed
    arn = printed.split()[-1]
    sagemaker = api_server.client("sagemaker")
    assert sagemaker.describe_model_package(ModelPackageName=arn)["ModelPackageVersion"] == 1
    said = _refused(api_server, "model-package-groups", "delete", group)
    assert "delete them first" in said
    _ok(api_server, "model-packages", "delete", arn)
    _ok(api_server, "model-package-groups", "delete", group)
    groups = sagemaker.list_model_package_groups()["ModelPackageGroupSummaryList"]
    assert group not in [g["ModelPackageGroupName"] for g in groups]
    del request["ModelPackageGroupName"]
    said = _refused(api_server, "model-packages", "create", "--request", _file(tmp_path, request))
    assert "ModelPackageName" in said
