"""`MaxConcurrentTransforms` through a real `openmaker server`: an instance keeps that many
requests in flight, across its objects (each small object is one mini-batch), and never more;
every object's output is still whole and in order."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from openmaker.runtime import unavailable_reason
from tests.apiserver import ApiServer
from tests.test_transform import Transforms

pytestmark = pytest.mark.skipif(
    unavailable_reason() is not None, reason="transform jobs need the bwrap sandbox"
)

# Each request waits (up to 20 s) until 3 are in flight at once, then answers; the container
# logs the most it ever had in flight. Posted one at a time, each would wait the 20 s out.
GATHERING = """#!/usr/bin/env python3
import http.server, threading
lock = threading.Condition()
state = {"now": 0, "most": 0}
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/ping" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
            print("in flight", state["now"], "most", state["most"], flush=True)
            lock.notify_all()
            lock.wait_for(lambda: state["most"] >= 3, timeout=20)
            state["now"] -= 1
        answer = body.upper()
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"""


@pytest.fixture
def transforms(api_server: ApiServer, tmp_path: Path) -> Iterator[Transforms]:
    made = Transforms(api_server, tmp_path)
    try:
        yield made
    finally:
        made.stop_all()


def test_max_concurrent_transforms_requests_in_flight_across_objects(
    transforms: Transforms,
) -> None:
    model = transforms.model(GATHERING)
    objects = {f"{i:02}.txt": f"object {i}\n" for i in range(9)}
    name = transforms.create(
        model, transforms.inputs(objects), MaxConcurrentTransforms=3, BatchStrategy="SingleRecord"
    )
    described = transforms.wait(name)
    assert described["TransformJobStatus"] == "Completed", described.get("FailureReason")
    for key, text in objects.items():
        assert transforms.output(name, f"{key}.out") == text.upper()
    logs = transforms.server.client("logs")
    group = "/aws/sagemaker/TransformJobs"
    stream = logs.describe_log_streams(logGroupName=group, logStreamNamePrefix=f"{name}/")
    events = logs.get_log_events(
        logGroupName=group, logStreamName=stream["logStreams"][0]["logStreamName"]
    )["events"]
    most = max(int(e["message"].split()[-1]) for e in events if "in flight" in e["message"])
    assert most == 3
