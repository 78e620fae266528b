"""`ProductionVariants[].VolumeSizeInGB` for real: each instance's folder is a disk volume of its
own (runtime/volume.py, as a training host's), holding its model data and its container's
copy-on-write root; model data that does not fit fails the endpoint, saying so."""

from __future__ import annotations

import contextlib
import io
import tarfile
from typing import Any

import pytest
from botocore.exceptions import ClientError

from openmaker.runtime.volume import unavailable_reason
from tests.helpers import unique_name
from tests.test_endpoints import Deployer, deployer, make_serve_image, model_archive, pytestmark

__all__ = ["deployer", "pytestmark"]  # the fixture, and the skip without a sandbox

needs_volumes = pytest.mark.skipif(
    unavailable_reason() is not None, reason=f"no volumes here: {unavailable_reason()}"
)

# Answers with the sizes, in whole GB, of the file systems holding /opt/ml/model and its root
# (the copy-on-write layer where what it writes goes; an overlay tells its upper layer's).
SERVE = """#!/usr/bin/env python3
import http.server, os
def gb(path):
    stat = os.statvfs(path)
    return round(stat.f_blocks * stat.f_frsize / 2**30)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/ping" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        answer = f"{gb('/opt/ml/model')} {gb('/')}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"""


class _Zeros(io.RawIOBase):
    """`size` zero bytes, read as a file (never held in memory whole)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = min(len(buffer), self.left)
        buffer[:count] = bytes(count)
        self.left -= count
        return count


def huge_archive(size: int) -> bytes:
    """A model.tar.gz whose one member is `size` bytes (of zeros: small once compressed)."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("weights.bin")
        info.size = size
        tar.addfile(info, io.BufferedReader(_Zeros(size)))
    return data.getvalue()


def create(deployer: Deployer, archive: bytes, volume_gb: int) -> str:
    name = unique_name("ep")
    image = make_serve_image(deployer.tmp_path / name, SERVE)
    with contextlib.suppress(ClientError):
        deployer.s3.create_bucket(Bucket="models")
    deployer.s3.put_object(Bucket="models", Key=f"{name}/model.tar.gz", Body=archive)
    deployer.sagemaker.create_model(
        ModelName=name,
        PrimaryContainer={"Image": str(image), "ModelDataUrl": f"s3://models/{name}/model.tar.gz"},
        ExecutionRoleArn="arn:aws:iam::000000000000:role/openmaker",
    )
    deployer.sagemaker.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": name,
                "InstanceType": "ml.m5.large",
                "InitialInstanceCount": 1,
                "VolumeSizeInGB": volume_gb,
            }
        ],
    )
    deployer.endpoints.append(name)
    deployer.sagemaker.create_endpoint(EndpointName=name, EndpointConfigName=name)
    return name


@needs_volumes
def test_an_instance_has_its_volume_and_a_model_too_big_fails(deployer: Deployer) -> None:
    small = create(deployer, model_archive({"weights.txt": b"w"}), volume_gb=1)
    too_big = create(deployer, huge_archive(1100 * 1024**2), volume_gb=1)

    described = deployer.wait(small)
    assert described["EndpointStatus"] == "InService", described.get("FailureReason")
    answer = deployer.runtime.invoke_endpoint(EndpointName=small, Body=b"x")
    assert answer["Body"].read() == b"1 1"  # both on its 1 GB volume

    failed = deployer.wait(too_big)
    assert failed["EndpointStatus"] == "Failed"
    reason = failed["FailureReason"]
    assert "production variant AllTraffic" in reason
    assert "does not fit on the instance's 1 GB volume (VolumeSizeInGB)" in reason
