"""A serving container that stays alive but stops answering /ping is taken out of the rotation
and replaced, the reason in the endpoint's log: a real `openmaker server` that pings often
(OPENMAKER_HEALTH_CHECK_SECONDS), a sandboxed model server whose /ping hangs once asked to."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from openmaker.runtime import unavailable_reason
from tests.apiserver import running_api_server
from tests.helpers import kill_every_worker
from tests.test_endpoints import Deployer, wait_until

pytestmark = pytest.mark.skipif(
    unavailable_reason() is not None, reason="endpoints need the bwrap sandbox"
)

# Answers each invocation with a token drawn when it started; after `hang`, its /ping never
# answers while the process (and its invocations) go on.
HANGS = """#!/usr/bin/env python3
import http.server, os, threading
TOKEN = os.urandom(8).hex()
hung = threading.Event()
class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass
    def do_GET(self):
        if hung.is_set():
            threading.Event().wait()
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if body == b"hang":
            hung.set()
        answer = TOKEN.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"""


@pytest.fixture
def pinging_deployer(tmp_path: Path) -> Iterator[Deployer]:
    home = tmp_path / "home"
    with running_api_server(home, OPENMAKER_HEALTH_CHECK_SECONDS="0.5") as server:
        deploy = Deployer(server, tmp_path)
        try:
            yield deploy
        finally:
            deploy.delete_all()
            kill_every_worker(home)


def test_a_container_that_stops_answering_ping_is_replaced(pinging_deployer: Deployer) -> None:
    deployer = pinging_deployer
    name = deployer.endpoint(deployer.model(HANGS, {"weights.txt": b"w"}))
    assert deployer.wait(name)["EndpointStatus"] == "InService"
    runtime = deployer.runtime

    def token(body: bytes) -> str | None:
        try:
            answer = runtime.invoke_endpoint(EndpointName=name, Body=body)
        except ClientError:
            return None  # between the old container and the new
        return str(answer["Body"].read().decode())

    first = token(b"hang")  # answered, then its pings hang
    assert first is not None
    assert token(b"x") == first  # still alive: invocations are answered

    logs = deployer.server.client("logs")
    group = f"/aws/sagemaker/Endpoints/{name}"

    def noted() -> bool:
        for stream in logs.describe_log_streams(logGroupName=group)["logStreams"]:
            found = logs.get_log_events(logGroupName=group, logStreamName=stream["logStreamName"])
            if any("failed its health check" in e["message"] for e in found["events"]):
                return True
        return False  # the stream exists once something is written to it

    wait_until(noted, "the failed health check to be logged", timeout=60)
    wait_until(lambda: token(b"x") not in (None, first), "a new container to answer", 60)
    described = deployer.sagemaker.describe_endpoint(EndpointName=name)
    assert described["EndpointStatus"] == "InService"
    assert described["ProductionVariants"][0]["CurrentInstanceCount"] == 1
