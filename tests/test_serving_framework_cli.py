"""`openmaker endpoints deploy` (from a training job, and from a local model
archive with an image) and `openmaker models` / `endpoint-configs` list, describe, delete,
against a real server."""

from __future__ import annotations

import json
import os
import subprocess
from functools import partial
from pathlib import Path

from tests.apiserver import openmaker_command
from tests.helpers import make_image, request, unique_name
from tests.test_endpoints import (
    SERVE,
    Deployer,
    deployer,
    make_serve_image,
    model_archive,
    pytestmark,
    wait_until,
)

__all__ = ["deployer", "pytestmark"]  # the fixture, and the skip without a sandbox

SKLEARN_IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"


def run_cli(deployer: Deployer, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **deployer.server.env}
    done = subprocess.run(
        [*openmaker_command(), *args], env=env, capture_output=True, text=True, timeout=180
    )
    assert (done.returncode == 0) == ok, done.stdout + done.stderr
    return done


# The serving half of a script-mode job's code; the job itself (a bring-your-own folder, quick)
# only writes the model.
SERVE_PY = """
import os

class Scaled:
    def __init__(self, factor):
        self.factor = factor

    def predict(self, rows):
        return rows * self.factor + 1

def model_fn(model_dir):
    return Scaled(float(open(os.path.join(model_dir, "factor.txt")).read()))
"""


def test_deploy_from_a_training_job(deployer: Deployer, tmp_path: Path) -> None:
    """The job's artifacts and its code (the sagemaker_program / submit directory
    hyperparameters, as the SDK v2 sets them) make a model the stand-in serves; models and
    configs are listed, described and deleted."""
    s3 = deployer.s3
    bucket = unique_name("cli-deploy")
    s3.create_bucket(Bucket=bucket)
    code = model_archive({"serve.py": SERVE_PY.encode()})
    s3.put_object(Bucket=bucket, Key="code/sourcedir.tar.gz", Body=code)
    image = make_image(tmp_path / "train", "#!/bin/sh\necho 2 > /opt/ml/model/factor.txt\n")
    job = unique_name("cli-job")
    deployer.sagemaker.create_training_job(
        **request(
            job,
            str(image),
            f"s3://{bucket}/out",
            HyperParameters={
                "sagemaker_program": json.dumps("serve.py"),
                "sagemaker_submit_directory": json.dumps(f"s3://{bucket}/code/sourcedir.tar.gz"),
            },
        )
    )
    waiter = deployer.sagemaker.get_waiter("training_job_completed_or_stopped")
    waiter.wait(TrainingJobName=job, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    name = unique_name("cli-ep")
    deployer.endpoints.append(name)
    deployed = run_cli(
        deployer, "endpoints", "deploy", name, "--job", job, "--image", SKLEARN_IMAGE
    ).stdout
    assert f"Endpoint {name} is InService" in deployed
    (tmp_path / "in.csv").write_text("10\n")
    run_cli(deployer, "endpoints", "invoke", name, str(tmp_path / "in.csv"),
            str(tmp_path / "out.json"), "--content-type", "text/csv")  # fmt: skip
    assert json.loads((tmp_path / "out.json").read_text()) == [[21.0]]

    assert name in run_cli(deployer, "models", "list").stdout
    assert "Container image" in run_cli(deployer, "models", "describe", name).stdout
    model = json.loads(run_cli(deployer, "models", "describe", name, "--json").stdout)
    assert model["PrimaryContainer"]["Image"] == SKLEARN_IMAGE
    assert model["PrimaryContainer"]["Environment"]["SAGEMAKER_PROGRAM"] == "serve.py"
    config = json.loads(run_cli(deployer, "endpoint-configs", "describe", name, "--json").stdout)
    assert config["ProductionVariants"][0]["ModelName"] == name
    run_cli(deployer, "endpoints", "delete", name)
    wait_until(partial(deployer.gone, name), "the endpoint to go")
    run_cli(deployer, "endpoint-configs", "delete", name)
    run_cli(deployer, "models", "delete", name)
    assert name not in run_cli(deployer, "models", "list").stdout
    assert name not in run_cli(deployer, "endpoint-configs", "list").stdout
    missing = run_cli(deployer, "models", "describe", name, ok=False)
    assert "Could not find model" in missing.stderr


def test_deploy_from_a_local_archive(deployer: Deployer, tmp_path: Path) -> None:
    """A local model.tar.gz is uploaded to the SDK's default bucket; an endpoint that fails
    ends the command with its reason."""
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(model_archive({"weights.txt": b"w5\n"}))
    image = make_serve_image(tmp_path / "image", SERVE)
    name = unique_name("cli-local")
    deployer.endpoints.append(name)
    deployed = run_cli(deployer, "endpoints", "deploy", name, "--model-data", str(archive),
                       "--image", str(image), "--env", "GREETING=hey").stdout  # fmt: skip
    assert f"to s3://sagemaker-{deployer.server.env['AWS_REGION']}-" in deployed
    answer = deployer.runtime.invoke_endpoint(EndpointName=name, Body=b"x")
    assert answer["Body"].read() == b"w5 hey x"

    # Without weights.txt the model server ends as it starts.
    empty = tmp_path / "empty.tar.gz"
    empty.write_bytes(model_archive({"other.txt": b""}))
    broken = unique_name("cli-broken")
    deployer.endpoints.append(broken)
    failed = run_cli(deployer, "endpoints", "deploy", broken, "--model-data", str(empty),
                     "--image", str(image), ok=False)  # fmt: skip
    assert f"endpoint {broken} failed:" in failed.stderr
    assert "exited with status" in failed.stderr
