"""Framework models as the sagemaker SDK (v2) deploys them, unchanged, against a real
`openmaker server`: SageMaker's framework serving images are stood in for by
openmaker/serving/framework/ (handler semantics of SageMaker's inference toolkits) inside each
instance's sandbox."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from openmaker.runtime import unavailable_reason
from tests.apiserver import ApiServer
from tests.egress import Egress
from tests.helpers import unique_name
from tests.test_api_clients import ROLE, client_env, new_bucket
from tests.test_endpoints import Deployer, deployer, model_archive, wait_until

__all__ = ["deployer"]  # the fixture

SKLEARN_SERVING_IMAGE = (
    "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"
)

pytestmark = pytest.mark.skipif(
    unavailable_reason() is not None, reason="endpoints need the bwrap sandbox"
)

# One file trains (script mode) and serves (model_fn), as the SDK's examples do.
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

SCRIPT = """
import numpy as np
import sagemaker
from sagemaker.deserializers import CSVDeserializer, JSONDeserializer
from sagemaker.serializers import CSVSerializer, JSONSerializer
from sagemaker.sklearn import SKLearn

session = sagemaker.Session(default_bucket={bucket!r})
estimator = SKLearn(entry_point="train.py", source_dir={source!r}, framework_version="1.2-1",
                    py_version="py3", hyperparameters={{"scale": 2}}, role={role!r},
                    instance_count=1, instance_type="ml.m5.large", sagemaker_session=session)
estimator.fit({{"train": {data!r}}}, wait=False)
# A wait polling every second (the SDK's own, with or without logs, every few seconds).
session.wait_for_job(estimator.latest_training_job.name, poll=1)
# wait=False, then a wait polling every second (the SDK's own polls every 30 s).
predictor = estimator.deploy(initial_instance_count=1, instance_type="ml.m5.large", wait=False)
session.wait_for_endpoint(predictor.endpoint_name, poll=1)
try:
    # The SKLearnPredictor's own: NumPy arrays as application/x-npy both ways.
    print("NPY", predictor.predict(np.array([[3.0], [4.0]])).round(3).tolist())
    predictor.serializer, predictor.deserializer = CSVSerializer(), CSVDeserializer()
    print("CSV", predictor.predict([[5.0]]))
    predictor.serializer, predictor.deserializer = JSONSerializer(), JSONDeserializer()
    print("JSON", [round(v, 3) for v in predictor.predict([[6.0]])])
finally:
    predictor.delete_endpoint()
"""


def test_estimator_deploy_after_script_mode(
    api_server: ApiServer, tmp_path: Path, no_egress: Egress
) -> None:
    """A script-mode SKLearn job's model, deployed by estimator.deploy(): the stand-in fetches
    the job's code from S3 (SAGEMAKER_SUBMIT_DIRECTORY), loads the model with its model_fn and
    answers through the default handlers in each of the SDK's serializers' content types."""
    bucket = new_bucket(api_server)
    # y = 2x + 1, scaled by the hyperparameter: y = 4x + 2
    rows = "".join(f"{x},{2 * x + 1}\n" for x in range(5))
    api_server.client("s3").put_object(Bucket=bucket, Key="train/data.csv", Body=rows.encode())
    source = tmp_path / "src"
    source.mkdir()
    (source / "train.py").write_text(TRAIN_AND_SERVE)
    done = run_sdk(
        api_server,
        tmp_path,
        no_egress,
        SCRIPT.format(bucket=bucket, source=str(source), role=ROLE, data=f"s3://{bucket}/train"),
    )
    assert "NPY [14.0, 18.0]" in done
    assert "CSV [['22.0']]" in done
    assert "JSON [26.0]" in done


MODELS_SCRIPT = """
import numpy as np
import sagemaker
from botocore.exceptions import ClientError
from sagemaker.pytorch import PyTorchModel
from sagemaker.serializers import JSONSerializer
from sagemaker.deserializers import JSONDeserializer
from sagemaker.sklearn import SKLearnModel

session = sagemaker.Session(default_bucket={bucket!r})
common = dict(role={role!r}, sagemaker_session=session)

def up(model):
    return model.deploy(initial_instance_count=1, instance_type="ml.m5.large", wait=False)

# The whole handler chain in the user's module; the code stays in S3 (no repack).
sklearn = up(SKLearnModel(model_data={sklearn_data!r}, entry_point="inference.py",
                          source_dir={sklearn_source!r}, framework_version="1.2-1", **common))
# PyTorch's default handlers (TorchScript model.pt), the code repacked into the model's code/
# with its requirements.txt installed.
torch = up(PyTorchModel(model_data={torch_data!r}, entry_point="inference.py",
                        source_dir={torch_source!r}, framework_version="2.1",
                        py_version="py310", **common))
try:
    for predictor in (sklearn, torch):
        session.wait_for_endpoint(predictor.endpoint_name, poll=1)
    sklearn.serializer, sklearn.deserializer = JSONSerializer(), JSONDeserializer()
    print("SKLEARN", sklearn.predict({{"values": [1, 2]}}))
    try:
        sklearn.predict({{"values": []}})
    except ClientError as error:
        print("MODELERROR", error.response["Error"]["Code"], error.response["OriginalStatusCode"],
              error.response["OriginalMessage"])
    print("TORCH", torch.predict(np.array([[1.0, 2.0]], dtype="float32")).tolist())
finally:
    sklearn.delete_endpoint()
    torch.delete_endpoint()
"""

SKLEARN_INFERENCE = """
import json, os

def model_fn(model_dir):
    return float(open(os.path.join(model_dir, "factor.txt")).read())

def input_fn(body, content_type):
    assert content_type == "application/json", content_type
    values = json.loads(body)["values"]
    if not values:
        raise ValueError("no values given")
    return values

def predict_fn(values, factor):
    return [v * factor for v in values]

def output_fn(prediction, accept):
    return json.dumps({"predictions": prediction}), "application/json"
"""


def test_framework_models_deploy(api_server: ApiServer, tmp_path: Path, no_egress: Egress) -> None:
    """SKLearnModel with every handler of its own (an error in one is a ModelError carrying its
    message), and PyTorchModel on PyTorch's default handlers after the SDK's repack."""
    torch = pytest.importorskip("torch")
    bucket = new_bucket(api_server)
    s3 = api_server.client("s3")
    s3.put_object(Bucket=bucket, Key="sk/model.tar.gz", Body=model_archive({"factor.txt": b"3"}))
    scripted = torch.jit.script(torch.nn.Linear(2, 1, bias=False).requires_grad_(False))
    scripted.weight.fill_(1.0)
    saved = io.BytesIO()
    torch.jit.save(scripted, saved)
    torch_archive = model_archive({"model.pt": saved.getvalue()})
    s3.put_object(Bucket=bucket, Key="pt/model.tar.gz", Body=torch_archive)
    sklearn_source, torch_source = tmp_path / "sk", tmp_path / "pt"
    sklearn_source.mkdir()
    (sklearn_source / "inference.py").write_text(SKLEARN_INFERENCE)
    torch_source.mkdir()
    (torch_source / "inference.py").write_text("# PyTorch's default handlers serve this model\n")
    # Already installed here: pip needs no package index for it.
    (torch_source / "requirements.txt").write_text("numpy\n")
    done = run_sdk(
        api_server,
        tmp_path,
        no_egress,
        MODELS_SCRIPT.format(
            bucket=bucket,
            role=ROLE,
            sklearn_data=f"s3://{bucket}/sk/model.tar.gz",
            sklearn_source=str(sklearn_source),
            torch_data=f"s3://{bucket}/pt/model.tar.gz",
            torch_source=str(torch_source),
        ),
    )
    assert "SKLEARN {'predictions': [3.0, 6.0]}" in done
    assert "MODELERROR ModelError 500 ValueError: no values given" in done
    assert "TORCH [[3.0]]" in done


def run_sdk(server: ApiServer, tmp_path: Path, egress: Egress, script: str) -> str:
    path = tmp_path / "sdk.py"
    path.write_text(script)
    done = subprocess.run(
        egress.command([sys.executable, str(path)]),
        env=client_env(server, tmp_path / "client-home"),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


V3_SCRIPT = """
import os, sys
from sagemaker.core import image_uris
from sagemaker.core.resources import Endpoint, EndpointConfig, Model
from sagemaker.core.shapes import ContainerDefinition, ProductionVariant

data, role, name = sys.argv[1:4]
image = image_uris.retrieve(framework="sklearn", region=os.environ["AWS_REGION"], version="1.2-1",
                            py_version="py3", instance_type="ml.m5.large",
                            image_scope="inference")
code = {"SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code"}
Model.create(model_name=name, execution_role_arn=role,
             primary_container=ContainerDefinition(image=image, model_data_url=data,
                                                   environment=code))
EndpointConfig.create(endpoint_config_name=name, production_variants=[
    ProductionVariant(variant_name="AllTraffic", model_name=name, instance_type="ml.m5.large",
                      initial_instance_count=1)])
endpoint = Endpoint.create(endpoint_name=name, endpoint_config_name=name)
try:
    endpoint.wait_for_status("InService", poll=1)
    answer = endpoint.invoke(body=b"1,2", content_type="text/csv", accept="text/csv").body
    print("ANSWER", (answer if isinstance(answer, bytes) else answer.read()).decode().split())
finally:
    endpoint.delete()
"""

DOUBLER = """
class Doubler:
    def predict(self, rows):
        return rows * 2

def model_fn(model_dir):
    return Doubler()
"""


def test_sdk_v3_deploys_a_framework_model(
    api_server: ApiServer, tmp_path: Path, no_egress: Egress
) -> None:
    """SDK v3's resources (Model, EndpointConfig, Endpoint) with the scikit-learn serving
    image and code/ inside the model archive: model_fn of the user's, then the default
    input (CSV as float32), predict and output (CSV) handlers."""
    from tests.test_sdk_v3 import run_sdk3

    bucket = new_bucket(api_server)
    api_server.client("s3").put_object(
        Bucket=bucket, Key="v3/model.tar.gz",
        Body=model_archive({"code/inference.py": DOUBLER.encode()}),
    )  # fmt: skip
    output = run_sdk3(
        api_server, no_egress, tmp_path, V3_SCRIPT, f"s3://{bucket}/v3/model.tar.gz", ROLE,
        f"v3-{bucket}",
    )  # fmt: skip
    assert "ANSWER ['2.0,4.0']" in output


def test_serving_images_not_stood_in_for_are_refused(api_server: ApiServer) -> None:
    """TensorFlow's serving image answers through TensorFlow Serving, not these handlers."""
    from botocore.exceptions import ClientError

    image = "763104351884.dkr.ecr.us-east-1.amazonaws.com/tensorflow-inference:2.13-cpu"
    with pytest.raises(ClientError) as refused:
        api_server.client("sagemaker").create_model(
            ModelName="tf-model", ExecutionRoleArn=ROLE, PrimaryContainer={"Image": image}
        )
    error = refused.value.response["Error"]
    assert error["Code"] == "ValidationException"
    assert "TensorFlow serving image, which openmaker does not stand in for" in error["Message"]


def test_requirements_that_cannot_be_installed_fail_the_instance(
    deployer: Deployer, api_server: ApiServer
) -> None:
    """A requirements.txt pip cannot satisfy without a package index (as on a machine
    offline) ends the stand-in before /ping; its log says which file and why."""
    bucket = new_bucket(api_server)
    members = {
        "code/inference.py": b"def model_fn(model_dir):\n    return None\n",
        "code/requirements.txt": b"--no-index\nopenmaker-absent-package\n",
    }
    deployer.s3.put_object(Bucket=bucket, Key="m.tar.gz", Body=model_archive(members))
    model = unique_name("reqs")
    deployer.sagemaker.create_model(
        ModelName=model,
        ExecutionRoleArn=ROLE,
        PrimaryContainer={
            "Image": SKLEARN_SERVING_IMAGE,
            "ModelDataUrl": f"s3://{bucket}/m.tar.gz",
            "Environment": {"SAGEMAKER_PROGRAM": "inference.py",
                            "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code"},
        },
    )  # fmt: skip
    name = deployer.endpoint(model)
    described = deployer.wait(name)
    assert described["EndpointStatus"] == "Failed"
    assert "exited with status 1 before it answered /ping" in described["FailureReason"]
    assert (
        'its last output: "The model server cannot start: the packages of '
        "/opt/ml/model/code/requirements.txt could not be installed"
    ) in described["FailureReason"]
    logs = api_server.client("logs")
    group = f"/aws/sagemaker/Endpoints/{name}"

    def said() -> str:
        events = logs.filter_log_events(logGroupName=group)["events"]
        return "\n".join(e["message"] for e in events)

    wait_until(
        lambda: "/opt/ml/model/code/requirements.txt could not be installed" in said(),
        "the instance's log to say why",
    )


# Each model of a multi-model endpoint brings its entry point in its own archive.
SCALER = """
import os

def model_fn(model_dir):
    return float(open(os.path.join(model_dir, "factor.txt")).read())

def transform_fn(factor, data, content_type, accept):
    return ",".join(str(float(v) * factor) for v in data.split(",")), "text/csv"
"""


def test_a_framework_image_serves_a_multi_model_endpoint(
    deployer: Deployer, api_server: ApiServer
) -> None:
    """The stand-in's multi-model API: each TargetModel loaded with its own code/inference.py,
    both served by one instance."""
    bucket = new_bucket(api_server)
    for key, factor in (("a", b"2"), ("b", b"10")):
        archive = model_archive({"factor.txt": factor, "code/inference.py": SCALER.encode()})
        deployer.s3.put_object(Bucket=bucket, Key=f"mme/{key}.tar.gz", Body=archive)
    model = unique_name("mme")
    deployer.sagemaker.create_model(
        ModelName=model,
        ExecutionRoleArn=ROLE,
        PrimaryContainer={
            "Image": SKLEARN_SERVING_IMAGE,
            "ModelDataUrl": f"s3://{bucket}/mme/",
            "Mode": "MultiModel",
        },
    )
    name = deployer.endpoint(model)
    described = deployer.wait(name)
    assert described["EndpointStatus"] == "InService", described.get("FailureReason")

    def invoke(target: str) -> bytes:
        answer = deployer.runtime.invoke_endpoint(
            EndpointName=name, TargetModel=target, Body=b"1,2", ContentType="text/csv"
        )
        return bytes(answer["Body"].read())

    assert invoke("a.tar.gz") == b"2.0,4.0"
    assert invoke("b.tar.gz") == b"10.0,20.0"
    assert invoke("a.tar.gz") == b"2.0,4.0"
