"""The official clients, unchanged, against `openmaker server`: the aws CLI, the sagemaker SDK v2
and openmaker's own CLI, configured only through the variables `openmaker env` prints, and
never reaching beyond this machine (tests/egress.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.apiserver import ApiServer, openmaker_command
from tests.egress import Egress
from tests.helpers import make_image, request

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"


def client_env(server: ApiServer, home: Path) -> dict[str, str]:
    """A client's environment: what `openmaker env` prints and nothing else of AWS's, openmaker's
    or the sagemaker SDK's; a fresh home, so that no file of this machine's user (`~/.aws`,
    `~/.config/sagemaker`) configures it either."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "OPENMAKER_", "SAGEMAKER_", "BOTOCORE_"))
    }
    env.update(server.env)
    home.mkdir(exist_ok=True)
    env["HOME"] = str(home)
    return env


def new_bucket(server: ApiServer) -> str:
    name = f"clients-{uuid.uuid4().hex[:8]}"
    server.client("s3").create_bucket(Bucket=name)
    return name


def aws(server: ApiServer, egress: Egress, *args: str) -> dict:
    done = subprocess.run(
        egress.command([str(Path(sys.executable).parent / "aws"), *args, "--output", "json"]),
        env=client_env(server, egress.report.with_name("client-home")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout or "{}")


def test_aws_cli(api_server: ApiServer, tmp_path: Path, no_egress: Egress) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    image = make_image(tmp_path / "image", "#!/bin/sh\necho from the aws cli\n")
    body = request(name, str(image), f"s3://{new_bucket(api_server)}/out")
    (tmp_path / "job.json").write_text(json.dumps(body))
    created = aws(
        api_server,
        no_egress,
        "sagemaker",
        "create-training-job",
        "--cli-input-json",
        f"file://{tmp_path / 'job.json'}",
    )
    assert created["TrainingJobArn"].endswith(f"training-job/{name}")
    # The CLI that created the job is gone; the job goes on and ends. (`aws sagemaker wait`
    # polls every 30 s or more: a boto3 waiter with a short delay does the waiting.)
    api_server.client("sagemaker").get_waiter("training_job_completed_or_stopped").wait(
        TrainingJobName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
    )
    described = aws(
        api_server, no_egress, "sagemaker", "describe-training-job", "--training-job-name", name
    )
    assert described["TrainingJobStatus"] == "Completed"
    listed = aws(api_server, no_egress, "sagemaker", "list-training-jobs", "--name-contains", name)
    assert [s["TrainingJobName"] for s in listed["TrainingJobSummaries"]] == [name]


SDK_SCRIPT = """
import sys

import sagemaker
from sagemaker.estimator import Estimator
from sagemaker.sklearn import SKLearn

session = sagemaker.Session(default_bucket={bucket!r})
common = dict(role={role!r}, instance_count=1, instance_type="ml.m5.xlarge",
              sagemaker_session=session)

if sys.argv[1] == "image":
    estimator = Estimator(image_uri={image!r}, hyperparameters={{"epochs": 3}}, **common)
    estimator.fit({{"train": {data!r}}}, logs=True)
else:
    estimator = SKLearn(entry_point="train.py", source_dir={source!r}, framework_version="1.2-1",
                        py_version="py3", hyperparameters={{"alpha": 0.5}}, **common)
    estimator.fit({{"train": {data!r}}}, logs=True)
print("JOB", estimator.latest_training_job.name)
print("MODEL", estimator.model_data)
"""

TRAIN_PY = """
import argparse, os, pathlib
parser = argparse.ArgumentParser()
parser.add_argument("--alpha", type=float)
args = parser.parse_args()
rows = (pathlib.Path(os.environ["SM_CHANNEL_TRAIN"]) / "data.csv").read_text().split()
print(f"script mode read {len(rows)} rows with alpha={args.alpha}")
(pathlib.Path(os.environ["SM_MODEL_DIR"]) / "model.txt").write_text(str(args.alpha))
"""


@pytest.mark.parametrize("kind", ["image", "sklearn"])
def test_sagemaker_sdk(api_server: ApiServer, tmp_path: Path, kind: str, no_egress: Egress) -> None:
    bucket = new_bucket(api_server)
    s3 = api_server.client("s3")
    s3.put_object(Bucket=bucket, Key="data/train/data.csv", Body=b"1,2\n3,4\n5,6\n")
    image = make_image(
        tmp_path / "image",
        '#!/bin/sh\necho "bring your own: $(cat /opt/ml/input/config/hyperparameters.json)"\n'
        "ls /opt/ml/input/data/train\necho model > /opt/ml/model/model.txt\n",
    )
    source = tmp_path / "src"
    source.mkdir()
    (source / "train.py").write_text(TRAIN_PY)
    script = tmp_path / "sdk.py"
    script.write_text(
        SDK_SCRIPT.format(
            bucket=bucket,
            role=ROLE,
            image=str(image),
            data=f"s3://{bucket}/data/train",
            source=str(source),
        )
    )
    done = subprocess.run(
        no_egress.command([sys.executable, str(script), kind]),
        env=client_env(api_server, tmp_path / "client-home"),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    printed = done.stdout
    if kind == "image":
        assert "bring your own: {" in printed and '"epochs": "3"' in printed
        assert "data.csv" in printed
    else:
        assert "script mode read 3 rows with alpha=0.5" in printed
    model = next(line.split(" ", 1)[1] for line in printed.splitlines() if line.startswith("MODEL"))
    job = next(line.split(" ", 1)[1] for line in printed.splitlines() if line.startswith("JOB"))
    assert model == f"s3://{bucket}/{job}/output/model.tar.gz"
    key = model.removeprefix(f"s3://{bucket}/")
    assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] > 0
    described = api_server.client("sagemaker").describe_training_job(TrainingJobName=job)
    assert described["TrainingJobStatus"] == "Completed"
    if kind == "sklearn":
        training = next(
            t for t in described["SecondaryStatusTransitions"] if t["Status"] == "Training"
        )
        assert "scikit-learn image" in training["StatusMessage"]


def test_openmaker_cli_through_the_server(
    api_server: ApiServer, tmp_path: Path, no_egress: Egress
) -> None:
    name = f"omcli-{uuid.uuid4().hex[:8]}"
    image = make_image(tmp_path / "image", "#!/bin/sh\necho through the server\n")
    body = request(name, str(image), f"s3://{new_bucket(api_server)}/out")
    (tmp_path / "job.json").write_text(json.dumps(body))
    env = client_env(api_server, tmp_path / "client-home")
    trained = subprocess.run(
        no_egress.command([*openmaker_command(), "train", "--request", str(tmp_path / "job.json")]),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert "through the server" in trained.stdout
    assert "Completed" in trained.stdout
    # The job is the server's: the same job, seen by a boto3 client.
    described = api_server.client("sagemaker").describe_training_job(TrainingJobName=name)
    assert described["TrainingJobStatus"] == "Completed"
    listed = subprocess.run(
        no_egress.command([*openmaker_command(), "jobs", "list", "--name-contains", name]),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert name in listed.stdout
    logs = subprocess.run(
        no_egress.command([*openmaker_command(), "jobs", "logs", name]),
        env=env,
        capture_output=True,
        text=True,
    )
    assert "through the server" in logs.stdout
