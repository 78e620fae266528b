"""Multi-model endpoints for real: a real `openmaker server`, boto3, and a bring-your-own
container implementing SageMaker's multi-model API (a small Python HTTP server) that loads each
model from /opt/ml/models/<name>/model when asked."""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

import pytest
from botocore.exceptions import ClientError

from tests.helpers import unique_name
from tests.test_endpoints import Deployer, deployer, make_serve_image, model_archive, pytestmark

__all__ = ["deployer", "pytestmark"]  # the fixture, and the skip without a sandbox

# The multi-model container API: POST /models loads `url`/weights.txt (409 when loaded, 507
# past CAPACITY models), DELETE /models/<name> unloads, POST /models/<name>/invoke answers with
# the model's weights, how many times that name was asked to load, how many models are
# loaded, the TargetModel header and the body. A load takes a moment, as a real one does.
MMS = r"""#!/usr/bin/env python3
import http.server, json, os, threading, time
CAPACITY = int(os.environ["CAPACITY"])
lock = threading.Lock()
loaded, asked = {}, {}
class Handler(http.server.BaseHTTPRequestHandler):
    def answer(self, status, text=""):
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        if self.path == "/ping":
            return self.answer(200)
        with lock:
            models = [{"modelName": n, "modelUrl": u} for n, (u, _) in loaded.items()]
        self.answer(200, json.dumps({"models": models}))
    def do_DELETE(self):
        with lock:
            found = loaded.pop(self.path.split("/")[2], None)
        self.answer(200 if found else 404)
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/models":
            request = json.loads(body)
            name, url = request["model_name"], request["url"]
            with lock:
                asked[name] = asked.get(name, 0) + 1
                if name in loaded:
                    return self.answer(409)
                if len(loaded) >= CAPACITY:
                    return self.answer(507, "no room")
            time.sleep(0.3)
            weights = open(os.path.join(url, "weights.txt")).read().strip()
            with lock:
                loaded[name] = (url, weights)
            return self.answer(200)
        name = self.path.split("/")[2]
        with lock:
            if name not in loaded:
                return self.answer(404, "not loaded")
            text = (f"{loaded[name][1]} asked={asked[name]} loaded={len(loaded)} "
                    f"{self.headers['X-Amzn-SageMaker-Target-Model']} {body.decode()}")
        self.answer(200, text)
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"""


def mme_endpoint(deployer: Deployer, capacity: int) -> str:
    name = unique_name("mme")
    image = make_serve_image(deployer.tmp_path / name, MMS)
    with contextlib.suppress(ClientError):
        deployer.s3.create_bucket(Bucket="models")
    for model, weights in (("model-a", b"wa"), ("model-b", b"wb")):
        deployer.s3.put_object(
            Bucket="models",
            Key=f"{name}/{model}.tar.gz",
            Body=model_archive({"weights.txt": weights}),
        )
    deployer.s3.put_object(
        Bucket="models",
        Key=f"{name}/evil.tar.gz",
        Body=model_archive({"weights.txt": b"w", "../evil": b"out"}),
    )
    deployer.sagemaker.create_model(
        ModelName=name,
        PrimaryContainer={
            "Image": str(image),
            "Mode": "MultiModel",
            "ModelDataUrl": f"s3://models/{name}/",
            "Environment": {"CAPACITY": str(capacity)},
        },
        ExecutionRoleArn="arn:aws:iam::000000000000:role/openmaker",
    )
    described = deployer.sagemaker.describe_model(ModelName=name)
    assert described["PrimaryContainer"]["Mode"] == "MultiModel"
    assert described["PrimaryContainer"]["ModelDataUrl"] == f"s3://models/{name}/"
    endpoint = deployer.endpoint(name)
    assert deployer.wait(endpoint)["EndpointStatus"] == "InService"
    return endpoint


def invoke(deployer: Deployer, endpoint: str, target: str, body: bytes = b"x") -> str:
    answer = deployer.runtime.invoke_endpoint(EndpointName=endpoint, TargetModel=target, Body=body)
    return str(answer["Body"].read().decode())


def refusal(deployer: Deployer, endpoint: str, **extra: str) -> tuple[str, str]:
    with pytest.raises(ClientError) as refused:
        deployer.runtime.invoke_endpoint(EndpointName=endpoint, Body=b"x", **extra)
    error = refused.value.response["Error"]
    return error["Code"], error["Message"]


def test_a_multi_model_endpoint_loads_each_model_once_on_first_use(deployer: Deployer) -> None:
    endpoint = mme_endpoint(deployer, capacity=5)
    # Concurrent first requests for a model: one load, every one answered by it.
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: invoke(deployer, endpoint, "model-a.tar.gz"), range(4)))
    assert answers == ["wa asked=1 loaded=1 model-a.tar.gz x"] * 4
    assert (
        invoke(deployer, endpoint, "model-b.tar.gz", b"y") == "wb asked=1 loaded=2 model-b.tar.gz y"
    )
    # Loaded already: not fetched or loaded again.
    assert invoke(deployer, endpoint, "model-a.tar.gz") == "wa asked=1 loaded=2 model-a.tar.gz x"

    code, message = refusal(deployer, endpoint, TargetModel="missing.tar.gz")
    assert code == "ValidationError" and "Failed to download model data" in message
    assert "missing.tar.gz" in message
    code, message = refusal(deployer, endpoint, TargetModel="evil.tar.gz")
    assert code == "ValidationError" and "was refused" in message
    assert not list((deployer.server.home / "endpoints" / endpoint).rglob("evil"))
    code, message = refusal(deployer, endpoint, TargetModel="../other/model-a.tar.gz")
    assert code == "ValidationError" and "relative to the endpoint's model prefix" in message
    code, message = refusal(deployer, endpoint)
    assert code == "ValidationError" and "TargetModel must name the model" in message


def test_a_container_out_of_room_has_its_least_recent_model_unloaded(deployer: Deployer) -> None:
    endpoint = mme_endpoint(deployer, capacity=1)
    assert invoke(deployer, endpoint, "model-a.tar.gz") == "wa asked=1 loaded=1 model-a.tar.gz x"
    # 507 for model-b: model-a is unloaded (and its files removed), model-b asked again.
    assert invoke(deployer, endpoint, "model-b.tar.gz") == "wb asked=2 loaded=1 model-b.tar.gz x"
    (instance,) = (deployer.server.home / "endpoints" / endpoint).iterdir()
    assert len(list((instance / "models").iterdir())) == 1
    # model-a comes back the same way, model-b going.
    assert invoke(deployer, endpoint, "model-a.tar.gz") == "wa asked=3 loaded=1 model-a.tar.gz x"
