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
