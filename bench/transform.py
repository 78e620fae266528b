"""Batch transform of 100,000 CSV lines in `MultiRecord` (mini-batches of up to 1 MB) through a
real `openmaker server`, against a loop that reads the same object, posts the same mini-batches
to the same container program run directly on this machine, and writes the answers to a file.

The job's transform is timed from the first request's arrival at the container (as its log line
says) to the job's TransformEndTime (its output written), since a job's own start (the sandbox,
the instance's health check) and end (the instances' stop) are not the transform's work; the
loop is timed from its first read to its output written. The ratio is the loop's time over the
job's."""

from __future__ import annotations

import http.client
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.stats import Timings, timed
from tests.apiserver import ApiServer, running_api_server
from tests.s3server import free_port
from tests.test_endpoints import make_serve_image, model_archive

LINES = 100_000
COLUMNS = 24
MAX_PAYLOAD_MB = 1
BUCKET = "bench-transform"

# Sums each line; logs when each request arrived and when its answer was sent (epoch seconds).
SERVE = """#!/usr/bin/env python3
import http.server, os, sys, time
PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def do_GET(self):
        self.send_response(200 if self.path == "/ping" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def do_POST(self):
        start = time.time()
        body = self.rfile.read(int(self.headers["Content-Length"]))
        answer = "".join(f"{sum(int(v) for v in line.split(b','))}\\n"
                         for line in body.splitlines() if line).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
        print("timed", start, time.time(), flush=True)
http.server.ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()
"""


def run(quick: bool, scratch: Path) -> list[str]:
    runs = 1 if quick else 3
    print(f"batch transform of {LINES} CSV lines, MultiRecord ({runs} runs each)", flush=True)
    data = "".join(
        ",".join(str(i + c) for c in range(COLUMNS)) + "\n" for i in range(LINES)
    ).encode()
    image = make_serve_image(scratch / "transform-image", SERVE)
    with running_api_server(scratch / "transform-home") as server:
        s3 = server.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="in/lines.csv", Body=data)
        s3.put_object(Bucket=BUCKET, Key="model.tar.gz", Body=model_archive({"m": b"m"}))
        server.client("sagemaker").create_model(
            ModelName="bench-summer",
            PrimaryContainer={"Image": str(image), "ModelDataUrl": f"s3://{BUCKET}/model.tar.gz"},
            ExecutionRoleArn="arn:aws:iam::000000000000:role/openmaker",
        )
        jobs = [_job(server, f"bench-transform-{run}") for run in range(runs)]
        expected = _answers(data)
        for name, _ in jobs:
            output = s3.get_object(Bucket=BUCKET, Key=f"out-{name}/lines.csv.out")["Body"].read()
            assert output == expected, "the job's output differs from the container's answers"
        loops = [_direct_loop(server, image, scratch, expected) for _ in range(runs)]
    job = Timings([seconds for _, seconds in jobs])
    loop = Timings(loops)
    batches = -(-len(data) // (MAX_PAYLOAD_MB * 1024 * 1024))
    return [
        f"Batch transform, {LINES} CSV lines ({len(data) / 1e6:.1f} MB, about {batches} "
        f"mini-batches of {MAX_PAYLOAD_MB} MB): job {job.median:.3f} s; direct loop "
        f"{loop.median:.3f} s; ratio {loop.median / job.median:.2f}",
        f"  openmaker   {job.describe()}",
        f"  direct loop {loop.describe()}",
    ]


def _job(server: ApiServer, name: str) -> tuple[str, float]:
    """Run the job; its transform's seconds as the container saw them."""
    sagemaker = server.client("sagemaker")
    sagemaker.create_transform_job(
        TransformJobName=name,
        ModelName="bench-summer",
        BatchStrategy="MultiRecord",
        MaxPayloadInMB=MAX_PAYLOAD_MB,
        TransformInput={
            "DataSource": {
                "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/in/"}
            },
            "ContentType": "text/csv",
            "SplitType": "Line",
        },
        TransformOutput={"S3OutputPath": f"s3://{BUCKET}/out-{name}", "AssembleWith": "Line"},
        TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1},
    )
    sagemaker.get_waiter("transform_job_completed_or_stopped").wait(
        TransformJobName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 600}
    )
    described = sagemaker.describe_transform_job(TransformJobName=name)
    assert described["TransformJobStatus"] == "Completed", described.get("FailureReason")
    first = min(start for start, _ in _container_spans(server, name))
    return name, described["TransformEndTime"].timestamp() - first


def _container_spans(server: ApiServer, name: str) -> list[tuple[float, float]]:
    logs = server.client("logs")
    group = "/aws/sagemaker/TransformJobs"
    streams = logs.describe_log_streams(logGroupName=group, logStreamNamePrefix=f"{name}/")
    spans = []
    for stream in streams["logStreams"]:
        found: dict[str, Any] = {}
        while True:
            params: dict[str, Any] = {
                "logGroupName": group,
                "logStreamName": stream["logStreamName"],
                "startFromHead": True,
            }
            if found:
                params["nextToken"] = found["nextForwardToken"]
            page = logs.get_log_events(**params)
            if not page["events"]:
                break
            found = page
            for event in page["events"]:
                words = event["message"].split()
                if words[:1] == ["timed"]:
                    spans.append((float(words[1]), float(words[2])))
    assert spans, "the container logged no request"
    return spans


def _answers(data: bytes) -> bytes:
    return b"".join(
        f"{sum(int(v) for v in line.split(b','))}\n".encode() for line in data.splitlines()
    )


def _direct_loop(server: ApiServer, image: Path, scratch: Path, expected: bytes) -> float:
    """Read the object, post its mini-batches one after the other to the container program
    run directly, write the answers to a file: the seconds that took."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(image / "serve"), str(port)], stdout=subprocess.DEVNULL
    )
    s3 = server.client("s3")
    output = scratch / "direct.out"
    try:
        _wait_ping(port)

        def loop() -> None:
            data = s3.get_object(Bucket=BUCKET, Key="in/lines.csv")["Body"].read()
            connection = http.client.HTTPConnection("127.0.0.1", port)
            with output.open("wb") as out:
                for batch in _mini_batches(data):
                    connection.request("POST", "/invocations", batch, {"Content-Type": "text/csv"})
                    out.write(connection.getresponse().read())
            connection.close()

        _, seconds = timed(loop)
    finally:
        process.terminate()
        process.wait()
    assert output.read_bytes() == expected
    return seconds


def _mini_batches(data: bytes) -> list[bytes]:
    """Whole lines, packed up to MaxPayloadInMB: what the job posts."""
    limit = MAX_PAYLOAD_MB * 1024 * 1024
    batches, start = [], 0
    while start < len(data):
        end = len(data)
        if start + limit < len(data):
            end = data.rfind(b"\n", start, start + limit) + 1
        batches.append(data[start:end])
        start = end
    return batches


def _wait_ping(port: int) -> None:
    for _ in range(200):
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            connection.request("GET", "/ping")
            if connection.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the direct container did not answer /ping")
