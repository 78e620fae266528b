"""Validation under way when `openmaker server` is killed (`kill -9`) is carried on by the next
server: an algorithm's training job and a model package's transform job each run on meanwhile,
and what they validate ends Completed. One test for both: it starts two servers (~20 s)."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from openmaker.runtime import unavailable_reason
from tests.apiserver import running_api_server
from tests.helpers import kill_every_worker, make_image, unique_name
from tests.process_helpers import kill, processes_mentioning, wait_until
from tests.test_algorithms import algorithm_request, profile
from tests.test_algorithms_packages import SERVE, inference
from tests.test_endpoints import make_serve_image, model_archive

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
# Each runs a little while (the server is killed meanwhile), then ends well.
SLOW_TRAIN = "#!/bin/sh\nsleep 3\necho ok > /opt/ml/model/ok.txt\n"
SLOW_SERVE = SERVE.replace("sent = self.rfile", "__import__('time').sleep(3); sent = self.rfile")


def _status(home: Path, table: str, name: str) -> str:
    """A status in the database, read with no server running."""
    with contextlib.closing(sqlite3.connect(home / "openmaker.db")) as db:
        query = f"SELECT status FROM {table} WHERE name = ?"
        (status,) = db.execute(query, (name,)).fetchone()
    return str(status)


def _package_validation(bucket: str) -> dict[str, Any]:
    return {
        "ValidationRole": ROLE,
        "ValidationProfiles": [{"ProfileName": "transforms", "TransformJobDefinition": {
            "TransformInput": {"DataSource": {"S3DataSource": {
                "S3DataType": "S3Prefix", "S3Uri": f"s3://{bucket}/in/"
            }}},
            "TransformOutput": {"S3OutputPath": f"s3://{bucket}/out"},
            "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": 1},
        }}],
    }  # fmt: skip


@pytest.mark.skipif(unavailable_reason() is not None, reason="validation needs the sandbox")
def test_validation_under_way_survives_a_server_restart(tmp_path: Path) -> None:
    home, data = tmp_path / "home", tmp_path / "data"
    home.mkdir()
    data.mkdir()
    (data / "a.csv").write_text("1,2\n")
    algorithm, package = unique_name("restarted"), unique_name("restarted-pkg")
    # The training's data and outputs in folders: the next server's embedded store is on
    # another port, and the job's worker outlives this one.
    trains = profile("trains", "3", data.as_uri(), (tmp_path / "out").as_uri(), transform=False)
    try:
        with running_api_server(home) as server:
            sagemaker, s3 = server.client("sagemaker"), server.client("s3")
            sagemaker.create_algorithm(
                **algorithm_request(algorithm, str(make_image(tmp_path / "image", SLOW_TRAIN))),
                ValidationSpecification={"ValidationRole": ROLE, "ValidationProfiles": [trains]},
            )
            s3.create_bucket(Bucket=package)
            archive = model_archive({"m.txt": b"ranker"})
            s3.put_object(Bucket=package, Key="model.tar.gz", Body=archive)
            s3.put_object(Bucket=package, Key="in/a.txt", Body=b"x")
            served = make_serve_image(tmp_path / "served", SLOW_SERVE)
            sagemaker.create_model_package(
                ModelPackageName=package,
                InferenceSpecification=inference(str(served), f"s3://{package}/model.tar.gz"),
                ValidationSpecification=_package_validation(package),
            )

            def both_running() -> bool:
                sagemaker.describe_algorithm(AlgorithmName=algorithm)  # moves validation on
                sagemaker.describe_model_package(ModelPackageName=package)
                found = sagemaker.list_training_jobs(NameContains=algorithm)
                statuses = [j["TrainingJobStatus"] for j in found["TrainingJobSummaries"]]
                found = sagemaker.list_transform_jobs(NameContains=package)
                statuses += [j["TransformJobStatus"] for j in found["TransformJobSummaries"]]
                return statuses == ["InProgress", "InProgress"]

            wait_until(both_running, "both validations' jobs to run")
            kill(server.process.pid)
            server.process.wait()
        assert _status(home, "algorithms", algorithm) == "InProgress"
        assert _status(home, "model_packages", package) == "InProgress"
        (home / "server.json").unlink()  # kill -9 leaves it behind

        with running_api_server(home) as server:
            sagemaker, s3 = server.client("sagemaker"), server.client("s3")

            def validated() -> bool:
                statuses = (
                    sagemaker.describe_algorithm(AlgorithmName=algorithm)["AlgorithmStatus"],
                    sagemaker.describe_model_package(ModelPackageName=package)[
                        "ModelPackageStatus"
                    ],
                )
                return all(status in ("Completed", "Failed") for status in statuses)

            wait_until(validated, "the validations to end", timeout=120)
            described = sagemaker.describe_algorithm(AlgorithmName=algorithm)
            assert described["AlgorithmStatus"] == "Completed", described
            assert described["AlgorithmStatusDetails"]["ValidationStatuses"] == [
                {"Name": "trains", "Status": "Completed"}
            ]
            (job,) = sagemaker.list_training_jobs(NameContains=algorithm)["TrainingJobSummaries"]
            model = tmp_path / "out" / job["TrainingJobName"] / "output" / "model.tar.gz"
            assert model.is_file()
            described = sagemaker.describe_model_package(ModelPackageName=package)
            assert described["ModelPackageStatus"] == "Completed", described
            output = s3.get_object(Bucket=package, Key="out/a.txt.out")["Body"].read()
            assert output == b"ranker:x"
    finally:
        # What the killed server left: the jobs' workers, its embedded store's rclone.
        kill_every_worker(home)
        for pid in processes_mentioning(str(home)):
            with contextlib.suppress(ProcessLookupError):
                kill(pid)
