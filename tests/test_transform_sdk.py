"""The sagemaker SDK v2's `Transformer`, unchanged, against a real `openmaker server`: from an
estimator after its training job (`estimator.transformer(...).transform(...)`, the model made
from the job's image and artifacts) and from a model's name, each `wait=True` with `logs=True`,
the output compared line by line with the model's predictions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from openmaker.runtime import unavailable_reason
from tests.apiserver import ApiServer
from tests.egress import Egress
from tests.test_api_clients import ROLE, client_env, new_bucket
from tests.test_endpoints import model_archive
from tests.test_transform import SERVE, lines, sums

pytestmark = pytest.mark.skipif(
    unavailable_reason() is not None, reason="transform jobs need the bwrap sandbox"
)

TRAIN = "#!/bin/sh\necho trained > /opt/ml/model/weights.txt\n"

SCRIPT = """
import sys
import sagemaker
from sagemaker.estimator import Estimator
from sagemaker.transformer import Transformer

bucket, role, image, model_name = sys.argv[1:5]
session = sagemaker.Session(default_bucket=bucket)
data = f"s3://{bucket}/batch/"

estimator = Estimator(image_uri=image, role=role, instance_count=1,
                      instance_type="ml.m5.large", sagemaker_session=session)
estimator.fit(wait=True, logs=False)
transformer = estimator.transformer(instance_count=1, instance_type="ml.m5.large",
                                    strategy="MultiRecord", assemble_with="Line",
                                    output_path=f"s3://{bucket}/from-estimator")
transformer.transform(data, content_type="text/csv", split_type="Line", wait=True, logs=True)
print("ESTIMATOR", transformer.latest_transform_job.name, flush=True)

transformer = Transformer(model_name=model_name, instance_count=1,
                          instance_type="ml.m5.large", strategy="SingleRecord",
                          output_path=f"s3://{bucket}/from-model", sagemaker_session=session)
transformer.transform(data, content_type="text/csv", split_type="Line", wait=True, logs=True)
print("MODEL", transformer.latest_transform_job.name, flush=True)
"""


def test_sdk_transformer_from_an_estimator_and_from_a_model_name(
    api_server: ApiServer, tmp_path: Path, no_egress: Egress
) -> None:
    bucket = new_bucket(api_server)
    s3 = api_server.client("s3")
    s3.put_object(Bucket=bucket, Key="batch/a.csv", Body=lines(6).encode())
    s3.put_object(Bucket=bucket, Key="batch/b/c.csv", Body=lines(3, 10).encode())
    image = tmp_path / "image"
    image.mkdir()
    for program, text in (("train", TRAIN), ("serve", SERVE)):
        (image / program).write_text(text)
        (image / program).chmod(0o755)
    s3.put_object(Bucket=bucket, Key="model/model.tar.gz", Body=model_archive({"w": b"w"}))
    model_name = f"sdk-summer-{bucket}"
    api_server.client("sagemaker").create_model(
        ModelName=model_name,
        PrimaryContainer={"Image": str(image), "ModelDataUrl": f"s3://{bucket}/model/model.tar.gz"},
        ExecutionRoleArn=ROLE,
    )
    script = tmp_path / "sdk.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        no_egress.command([sys.executable, str(script), bucket, ROLE, str(image), model_name]),
        env=client_env(api_server, tmp_path / "client-home"),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # logs=True printed the containers' lines: one request of all 6 lines (MultiRecord), then
    # requests of one line each (SingleRecord).
    assert "request of 6 lines" in done.stdout and "request of 1 lines" in done.stdout
    for prefix in ("from-estimator", "from-model"):
        for key, expected in (("a.csv.out", sums(6)), ("b/c.csv.out", sums(3, 10))):
            body = s3.get_object(Bucket=bucket, Key=f"{prefix}/{key}")["Body"].read().decode()
            # SingleRecord without AssembleWith: each answer as the container gave it.
            assert body == expected, (prefix, key)


# Script mode: one file trains and serves (model_fn), as the SDK's examples do.
TRAIN_AND_SERVE = """
import argparse, os
import joblib
import numpy as np
from sklearn.linear_model import LinearRegression

def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float)
    args = parser.parse_args()
    data = np.loadtxt(os.path.join(os.environ["SM_CHANNEL_TRAIN"], "data.csv"), delimiter=",")
    model = LinearRegression().fit(data[:, :1], data[:, 1] * args.scale)
    joblib.dump(model, os.path.join(os.environ["SM_MODEL_DIR"], "model.joblib"))
"""

SCRIPT_MODE = """
import sys
import sagemaker
from sagemaker.sklearn import SKLearn

bucket, role, source = sys.argv[1:4]
session = sagemaker.Session(default_bucket=bucket)
estimator = SKLearn(entry_point="train.py", source_dir=source, framework_version="1.2-1",
                    py_version="py3", hyperparameters={"scale": 2}, role=role,
                    instance_count=1, instance_type="ml.m5.large", sagemaker_session=session)
estimator.fit({"train": f"s3://{bucket}/train"}, wait=True, logs=False)
transformer = estimator.transformer(instance_count=1, instance_type="ml.m5.large",
                                    strategy="MultiRecord", assemble_with="Line",
                                    accept="text/csv", output_path=f"s3://{bucket}/predictions")
transformer.transform(f"s3://{bucket}/batch/", content_type="text/csv", split_type="Line",
                      wait=True, logs=True)
print("JOB", transformer.latest_transform_job.name, flush=True)
"""


def test_sdk_transformer_after_a_script_mode_training_job(
    api_server: ApiServer, tmp_path: Path, no_egress: Egress
) -> None:
    bucket = new_bucket(api_server)
    s3 = api_server.client("s3")
    s3.put_object(Bucket=bucket, Key="train/data.csv", Body=b"1,1\n2,2\n3,3\n4,4\n")
    s3.put_object(Bucket=bucket, Key="batch/x.csv", Body=b"5\n6\n7\n")
    source = tmp_path / "src"
    source.mkdir()
    (source / "train.py").write_text(TRAIN_AND_SERVE)
    script = tmp_path / "sdk.py"
    script.write_text(SCRIPT_MODE)
    done = subprocess.run(
        no_egress.command([sys.executable, str(script), bucket, ROLE, str(source)]),
        env=client_env(api_server, tmp_path / "client-home"),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    body = s3.get_object(Bucket=bucket, Key="predictions/x.csv.out")["Body"].read().decode()
    # The model learnt y = 2x: a prediction per input line, in order.
    assert [round(float(v), 3) for v in body.split()] == [10.0, 12.0, 14.0]
