"""The sagemaker SDK (v2), unchanged, against a real `openmaker server`:
`AlgorithmEstimator(algorithm_arn=...).fit()`, then its `deploy()` (a model package made from
the algorithm, a model that names it, an endpoint) and `Predictor.predict`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from openmaker.runtime import unavailable_reason
from tests.apiserver import ApiServer
from tests.egress import Egress
from tests.helpers import make_image, unique_name
from tests.test_algorithms import TRAIN, algorithm_request
from tests.test_algorithms_packages import SERVE
from tests.test_api_clients import ROLE, client_env, new_bucket

pytestmark = pytest.mark.skipif(
    unavailable_reason() is not None, reason="training and endpoints need the bwrap sandbox"
)

SCRIPT = """
import json

import sagemaker
from sagemaker.algorithm import AlgorithmEstimator
from sagemaker.inputs import TrainingInput

session = sagemaker.Session(default_bucket={bucket!r})
estimator = AlgorithmEstimator(
    algorithm_arn={arn!r}, role={role!r}, instance_count=1, instance_type="ml.m5.large",
    hyperparameters={{"depth": 4}}, sagemaker_session=session,
)
# wait=False, then a wait polling every second (the SDK's own polls every 5 s).
estimator.fit({{"training": TrainingInput({data!r}, content_type="text/csv")}}, wait=False)
session.wait_for_job(estimator.latest_training_job.name, poll=1)
described = estimator.latest_training_job.describe()
print("STATUS", described["TrainingJobStatus"])
print("HYPERPARAMETERS", sorted(described["HyperParameters"].items()))
predictor = estimator.deploy(initial_instance_count=1, instance_type="ml.m5.large", wait=False)
try:
    session.wait_for_endpoint(predictor.endpoint_name, poll=1)
    model, sent = predictor.predict(b"q").decode().rsplit(":", 1)
    print("ANSWER", json.dumps(json.loads(model), sort_keys=True), sent)
finally:
    predictor.delete_endpoint()
"""


def test_the_sdk_trains_with_an_algorithm_and_deploys_its_model(
    api_server: ApiServer, tmp_path: Path, no_egress: Egress
) -> None:
    sagemaker = api_server.client("sagemaker")
    image = make_image(tmp_path / "image", TRAIN)
    (image / "serve").write_text(SERVE.replace("m.txt", "hyperparameters.json"))
    (image / "serve").chmod(0o755)
    request = algorithm_request(unique_name("sdk-algo"), str(image))
    request["InferenceSpecification"] = {
        "Containers": [{"Image": str(image)}],
        "SupportedContentTypes": ["text/plain"],
        "SupportedResponseMIMETypes": ["text/plain"],
        "SupportedRealtimeInferenceInstanceTypes": ["ml.m5.large"],
        "SupportedTransformInstanceTypes": ["ml.m5.large"],
    }
    arn = sagemaker.create_algorithm(**request)["AlgorithmArn"]
    bucket = new_bucket(api_server)
    api_server.client("s3").put_object(Bucket=bucket, Key="in/a.csv", Body=b"1,2\n")
    script = tmp_path / "sdk.py"
    script.write_text(SCRIPT.format(bucket=bucket, arn=arn, role=ROLE, data=f"s3://{bucket}/in/"))
    done = subprocess.run(
        no_egress.command([sys.executable, str(script)]),
        env=client_env(api_server, tmp_path / "client-home"),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "STATUS Completed" in done.stdout
    assert "HYPERPARAMETERS [('depth', '4'), ('rate', '0.5')]" in done.stdout
    # The endpoint served the model the job trained (its hyperparameters) through the package.
    assert 'ANSWER {"depth": "4", "rate": "0.5"} q' in done.stdout
