"""The sagemaker SDK (v2), unchanged, against a real `openmaker server`: `Model(...).deploy()`
then `Predictor.predict`, and an asynchronous endpoint's `AsyncPredictor`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from openmaker.runtime import unavailable_reason
from tests.apiserver import ApiServer
from tests.egress import Egress
from tests.test_api_clients import ROLE, client_env, new_bucket
from tests.test_endpoints import SERVE, make_serve_image, model_archive

pytestmark = pytest.mark.skipif(
    unavailable_reason() is not None, reason="endpoints need the bwrap sandbox"
)

UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
SCRIPT = """
import os
import sys

import sagemaker
from sagemaker.async_inference import AsyncInferenceConfig, WaiterConfig
from sagemaker.model import Model
from sagemaker.predictor import Predictor

session = sagemaker.Session(default_bucket={bucket!r})
def model():
    return Model(image_uri={image!r}, model_data={data!r}, role={role!r},
                 env={{"GREETING": "hi"}}, predictor_cls=Predictor, sagemaker_session=session)

# wait=False, then a wait polling every second (the SDK's own polls every 30 s).
predictor = model().deploy(initial_instance_count=1, instance_type="ml.m5.large", wait=False)
session.wait_for_endpoint(predictor.endpoint_name, poll=1)
print("REALTIME", predictor.predict(b"data").decode())
predictor.delete_endpoint()

config = AsyncInferenceConfig(output_path="s3://{bucket}/async-out")
predictor = model().deploy(initial_instance_count=1, instance_type="ml.m5.large",
                           async_inference_config=config, wait=False)
session.wait_for_endpoint(predictor.endpoint_name, poll=1)
try:
    response = predictor.predict_async(data=b"later", inference_id="sdk-request-1")
    print("NAMED", response.output_path)
    waiter = WaiterConfig(max_attempts=120, delay=1)
    print("ASYNC", response.get_result(waiter).decode())
    print("WAITED", predictor.predict(data=b"again", waiter_config=waiter).decode())
finally:
    predictor.delete_endpoint()
# The SDK's waiter for the failure object polls on in a thread until its attempts run out
# (as against SageMaker): the script ends without waiting for it.
sys.stdout.flush()
os._exit(0)
"""


def test_sdk_deploys_and_predicts(api_server: ApiServer, tmp_path: Path, no_egress: Egress) -> None:
    bucket = new_bucket(api_server)
    s3 = api_server.client("s3")
    s3.put_object(
        Bucket=bucket, Key="model/model.tar.gz", Body=model_archive({"weights.txt": b"w7\n"})
    )
    image = make_serve_image(tmp_path / "image", SERVE)
    script = tmp_path / "sdk.py"
    script.write_text(
        SCRIPT.format(
            bucket=bucket, image=str(image), data=f"s3://{bucket}/model/model.tar.gz", role=ROLE
        )
    )
    done = subprocess.run(
        no_egress.command([sys.executable, str(script)]),
        env=client_env(api_server, tmp_path / "client-home"),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "REALTIME w7 hi data" in done.stdout
    assert "ASYNC w7 hi later" in done.stdout
    # Named by a fresh UUID, not the InferenceId given, as SageMaker names it.
    assert re.search(rf"NAMED s3://{bucket}/async-out/{UUID}\.out$", done.stdout, re.M), done.stdout
    assert "WAITED w7 hi again" in done.stdout
