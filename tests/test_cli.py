"""The `openmaker` command as a user runs it: a real process, real jobs, a real S3 server."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.helpers import get_object, make_image, put_objects
from tests.s3server import S3Server

OPENMAKER = [sys.executable, "-m", "openmaker.cli.app"]

# A script-mode program that checks what the sagemaker-training toolkit hands it.
TRAIN_PY = """
import argparse, json, os, pathlib

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int)
parser.add_argument("--learning-rate", type=float)
args = parser.parse_args()

assert os.environ["SM_CHANNEL_TRAIN"] == "/opt/ml/input/data/train", os.environ["SM_CHANNEL_TRAIN"]
assert os.environ["SM_MODEL_DIR"] == "/opt/ml/model"
hps = json.loads(os.environ["SM_HPS"])
assert hps == {"epochs": 3, "learning-rate": 0.5}, hps
assert args.epochs == 3 and args.learning_rate == 0.5
rows = pathlib.Path(os.environ["SM_CHANNEL_TRAIN"], "rows.csv").read_text().split()
print(f"epochs={args.epochs} rows={len(rows)}")
pathlib.Path(os.environ["SM_MODEL_DIR"], "model.json").write_text(json.dumps({"rows": len(rows)}))
"""


def run(*args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*OPENMAKER, *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(
            f"openmaker {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        )
    return result


def test_script_mode_with_the_toolkit_on_s3(tmp_path: Path, home: Path, s3_env: S3Server) -> None:
    s3_env.make_bucket("ml-bucket")
    put_objects({"s3://ml-bucket/data/train/rows.csv": b"1\n2\n3\n4\n"})
    source = tmp_path / "src"
    source.mkdir()
    (source / "train.py").write_text(TRAIN_PY)
    (source / "helper.py").write_text("# shipped with the code\n")

    result = run(
        "train", "--entry-point", "train.py", "--source-dir", str(source),
        "--input", "train=s3://ml-bucket/data/train", "--hyperparameter", "epochs=3",
        "--hyperparameter", "learning-rate=0.5", "--output", "s3://ml-bucket/output",
        "--job-name", "script-mode",
    )  # fmt: skip
    assert "epochs=3 rows=4" in result.stdout
    assert "Completed" in result.stdout
    assert "s3://ml-bucket/output/script-mode/output/model.tar.gz" in result.stdout.replace(
        "\n", ""
    )
    with tarfile.open(
        fileobj=io.BytesIO(get_object("s3://ml-bucket/output/script-mode/output/model.tar.gz"))
    ) as tar:
        assert json.loads(tar.extractfile("model.json").read()) == {"rows": 4}  # type: ignore[union-attr]
    # The code travels as the SDK sends it: sourcedir.tar.gz beside the outputs.
    source_archive = get_object("s3://ml-bucket/output/script-mode/source/sourcedir.tar.gz")
    with tarfile.open(fileobj=io.BytesIO(source_archive)) as tar:
        assert sorted(tar.getnames()) == ["helper.py", "train.py"]

    described = json.loads(run("jobs", "describe", "script-mode", "--json").stdout)
    assert described["TrainingJobStatus"] == "Completed"
    assert json.loads(described["HyperParameters"]["sagemaker_program"]) == "train.py"
    logs = run("jobs", "logs", "script-mode").stdout
    assert "epochs=3 rows=4" in logs


def test_failed_job_exits_non_zero_with_the_reason(tmp_path: Path, home: Path) -> None:
    image = make_image(
        tmp_path / "image", "#!/bin/sh\necho 'bad data in row 7' > /opt/ml/output/failure\nexit 1\n"
    )
    result = run("train", "--image", str(image), "--job-name", "cli-fails", check=False)
    assert result.returncode == 1
    assert "AlgorithmError: bad data in row 7" in result.stderr


def test_request_file_no_wait_then_list_logs_stop(tmp_path: Path, home: Path) -> None:
    image = make_image(
        tmp_path / "image",
        "#!/bin/sh\ntrap 'exit 0' TERM\necho waiting\nwhile true; do sleep 0.1; done\n",
    )
    request = {
        "TrainingJobName": "from-file",
        "RoleArn": "arn:aws:iam::123456789012:role/SageMakerRole",
        "AlgorithmSpecification": {"TrainingImage": str(image), "TrainingInputMode": "File"},
        "OutputDataConfig": {"S3OutputPath": "s3://b/out"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 5},
        "StoppingCondition": {"MaxRuntimeInSeconds": 600},
    }
    path = tmp_path / "job.json"
    path.write_text(json.dumps(request))
    result = run("train", "--request", str(path), "--no-wait")
    assert "from-file" in result.stdout
    deadline = time.monotonic() + 60
    while "waiting" not in run("jobs", "logs", "from-file").stdout:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert "InProgress" in run("jobs", "list").stdout
    run("jobs", "stop", "from-file")
    follow = run("jobs", "logs", "from-file", "--follow")
    assert "waiting" in follow.stdout
    described = json.loads(run("jobs", "describe", "from-file", "--json").stdout)
    assert described["TrainingJobStatus"] == "Stopped"
    assert "Stopped" in run("jobs", "describe", "from-file").stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--image", "/nonexistent-image"], "TrainingImage"),
        (["train", "--image", "x", "--job-name", "bad_name"], "TrainingJobName"),
        (["train", "--image", "x", "--hyperparameter", "novalue"], "KEY=VALUE"),
        (["train", "--entry-point", "missing.py"], "missing.py"),
        (["jobs", "describe", "nope"], "ResourceNotFound"),
    ],
)
def test_bad_input_is_a_clear_error(home: Path, args: list[str], message: str) -> None:
    result = run(*args, check=False)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_embedded_demo(home: Path) -> None:
    result = run("demo")
    assert "test_accuracy=" in result.stdout
    accuracy = float(result.stdout.split("test_accuracy=")[1].split()[0])
    assert accuracy > 0.9
    [archive] = (home / "s3").rglob("model.tar.gz")
    with tarfile.open(archive) as tar:
        assert "model.joblib" in tar.getnames()


def test_brackets_in_reasons_are_printed_as_they_are(tmp_path: Path, home: Path) -> None:
    reason = "bad [/x] value [red]"
    image = make_image(
        tmp_path / "image", f"#!/bin/sh\nprintf '{reason}' > /opt/ml/output/failure\nexit 1\n"
    )
    result = run("train", "--image", str(image), "--job-name", "brackets", check=False)
    assert f"AlgorithmError: {reason}" in result.stderr
    assert reason in run("jobs", "describe", "brackets").stdout
