"""Processing jobs on a Ray cluster (OPENMAKER_EXECUTOR=ray) through a real `openmaker server`:
each host on its own node, fetching its inputs and uploading its outputs there. A cluster of
its own (test_ray.py's, on other loopback addresses: the two modules may run at once), whose
two worker nodes each stand for one ml.m5.large."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openmaker.runtime.overlay import node_networks, remove_node_network
from tests.apiserver import ApiServer, running_api_server
from tests.helpers import kill_every_worker
from tests.process_helpers import wait_until
from tests.test_processing import (
    data_bucket,
    image,
    keys,
    processing_request,
    s3_input,
    s3_output,
    stop_all,
    unique,
    wait_ended,
)
from tests.test_ray import NODE, TYPE, local_cluster

NODES = ("127.0.0.4", "127.0.0.5")
HEAD = "127.0.0.11"
# How long a job waits for room on the cluster before it fails (the server's setting).
WAIT_SECONDS = 10

# Each host says which node its end of the job's network is bound to (the VXLAN device's local
# address is its node's), what its inputs held, and what algo-2 told algo-1 across the nodes.
REPORTS = """
import json, os, socket, subprocess, time
config = json.load(open("/opt/ml/config/resourceconfig.json"))
host = config["current_host"]
link = subprocess.run(["ip", "-d", "-o", "link", "show", "eth1"], capture_output=True, text=True)
heard = None
if host == "algo-1":
    server = socket.create_server(("0.0.0.0", 5000))
    server.settimeout(60)
    connection, _ = server.accept()
    heard = connection.recv(100).decode()
else:
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("algo-1", 5000), timeout=2) as connection:
                connection.sendall(f"hello from {host}".encode())
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
report = {
    "host": host,
    "hosts": config["hosts"],
    "node": link.stdout.split(" local ")[1].split()[0],
    "shards": sorted(os.listdir("/opt/ml/processing/shards")),
    "piped": open("/opt/ml/processing/whole_0").read(),
    "heard": heard,
}
with open(f"/opt/ml/processing/out/{host}.json", "w") as out:
    json.dump(report, out)
with open("/opt/ml/output/message", "w") as message:
    message.write(f"done on {host}")
"""

# Writes a file of a Continuous output, then waits for its stop.
WAITS = """
import os, signal, socket, sys, time
host = socket.gethostname()
def stopped(*_):
    print(f"got SIGTERM on {host}", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stopped)
os.makedirs("/opt/ml/processing/live", exist_ok=True)
with open(f"/opt/ml/processing/live/{host}.txt", "w") as early:
    early.write("written first")
print(f"waiting on {host}", flush=True)
while True:
    time.sleep(0.1)
"""

# algo-2 fails with a message; algo-1 waits for its stop.
ONE_FAILS = WAITS.replace(
    'print(f"waiting on',
    """if host == "algo-2":
    with open("/opt/ml/output/message", "w") as message:
        message.write("algo-2 found no rows")
    sys.exit(3)
print(f"waiting on""",
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    with local_cluster(HEAD, NODES, {}, {TYPE: 1}) as made:
        yield made


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, cluster: Any) -> Iterator[ApiServer]:
    home = tmp_path_factory.mktemp("ray-processing") / "home"
    env = {
        "OPENMAKER_EXECUTOR": "ray",
        "RAY_ADDRESS": cluster.address,
        "OPENMAKER_RAY_WAIT_SECONDS": str(WAIT_SECONDS),
        # Every test's images are under the session's temporary folder.
        "OPENMAKER_FILE_ROOTS": str(tmp_path_factory.getbasetemp()),
    }
    try:
        with running_api_server(home, **env) as running:
            yield running
    finally:
        kill_every_worker(home)
        # A host lost with its node leaves its bridge there (the nodes here share this kernel).
        for job, host in node_networks(home):
            remove_node_network(home, job, host)


@pytest.fixture
def bucket(server: ApiServer) -> str:
    return data_bucket(server, "rayproc")


def _log(server: ApiServer, name: str) -> str:
    events = server.client("logs").filter_log_events(
        logGroupName="/aws/sagemaker/ProcessingJobs", logStreamNamePrefix=f"{name}/"
    )["events"]
    return "\n".join(e["message"] for e in events)


def _wait_for_log(server: ApiServer, name: str, said: str, count: int = 1) -> None:
    """Until the job's log says `said` `count` times, the job running all along."""
    sagemaker = server.client("sagemaker")

    def seen() -> bool:
        described = sagemaker.describe_processing_job(ProcessingJobName=name)
        assert described["ProcessingJobStatus"] == "InProgress", described.get("FailureReason")
        return _log(server, name).count(said) >= count

    wait_until(seen, f"{said!r} in the log", 240)


def test_two_hosts_on_two_nodes_read_their_shards_and_upload_their_outputs(
    server: ApiServer, tmp_path: Path, bucket: str
) -> None:
    sagemaker = server.client("sagemaker")
    name = unique("rayproc")
    request = processing_request(
        name,
        image(tmp_path, REPORTS),
        inputs=[
            s3_input(
                "whole", f"s3://{bucket}/whole", "/opt/ml/processing/whole", S3InputMode="Pipe"
            ),
            s3_input(
                "shards",
                f"s3://{bucket}/shards/",
                "/opt/ml/processing/shards",
                S3DataDistributionType="ShardedByS3Key",
            ),
        ],
        outputs=[s3_output("reports", f"s3://{bucket}/results", "/opt/ml/processing/out")],
        count=2,
    )
    try:
        sagemaker.create_processing_job(**request)
        described = wait_ended(sagemaker, name, timeout=240)
    finally:
        stop_all(sagemaker, [name])
    logs = _log(server, name)
    assert described["ProcessingJobStatus"] == "Completed", (described.get("FailureReason"), logs)
    assert described["ExitMessage"].startswith("done on algo-")
    expected = ["results/algo-1.json", "results/algo-2.json"]
    wait_until(lambda: keys(server, bucket, "results/") == expected, "the outputs", 30)
    s3 = server.client("s3")
    reports = {
        report["host"]: report
        for key in expected
        for report in [json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())]
    }
    # One host per node, each on the node the job's log says, reaching the other across them.
    assert {r["node"] for r in reports.values()} == set(NODES), reports
    for host, report in reports.items():
        assert f"host {host} runs on node {report['node']} of the Ray cluster" in logs
        assert report["hosts"] == ["algo-1", "algo-2"]
        assert report["piped"] == "a,b\n1,2\n"
    assert reports["algo-1"]["heard"] == "hello from algo-2"
    # ShardedByS3Key: object i to host i mod 2, each exactly once.
    assert reports["algo-1"]["shards"] == ["part-0.csv", "part-2.csv"]
    assert reports["algo-2"]["shards"] == ["part-1.csv", "part-3.csv"]


def test_a_stop_ends_the_job_stopped_on_both_nodes_after_a_continuous_upload(
    server: ApiServer, tmp_path: Path, bucket: str
) -> None:
    sagemaker = server.client("sagemaker")
    name = unique("rayproc-stop")
    output = s3_output("live", f"s3://{bucket}/live", "/opt/ml/processing/live", "Continuous")
    request = processing_request(name, image(tmp_path, WAITS), outputs=[output], count=2)
    try:
        sagemaker.create_processing_job(**request)
        # Continuous, from each node: both files are in S3 while the code still runs.
        wanted = ["live/algo-1.txt", "live/algo-2.txt"]
        wait_until(lambda: keys(server, bucket, "live/") == wanted, "the live outputs", 240)
        described = sagemaker.describe_processing_job(ProcessingJobName=name)
        assert described["ProcessingJobStatus"] == "InProgress"
        sagemaker.stop_processing_job(ProcessingJobName=name)
        described = wait_ended(sagemaker, name)
    finally:
        stop_all(sagemaker, [name])
    assert described["ProcessingJobStatus"] == "Stopped", described.get("FailureReason")
    wait_until(lambda: "got SIGTERM on algo-2" in _log(server, name), "both hosts' stops", 30)
    logs = _log(server, name)
    assert "got SIGTERM on algo-1" in logs
    assert set(re.findall(r"runs on node (\S+) of the Ray cluster", logs)) == set(NODES), logs


def test_a_failing_host_fails_the_job_with_its_message_and_stops_the_other(
    server: ApiServer, tmp_path: Path
) -> None:
    sagemaker = server.client("sagemaker")
    name = unique("rayproc-fails")
    try:
        sagemaker.create_processing_job(
            **processing_request(name, image(tmp_path, ONE_FAILS), count=2)
        )
        described = wait_ended(sagemaker, name)
    finally:
        stop_all(sagemaker, [name])
    logs = _log(server, name)
    assert described["ProcessingJobStatus"] == "Failed", logs
    assert described["FailureReason"] == "AlgorithmError: algo-2 found no rows"
    assert described["ExitMessage"] == "algo-2 found no rows"
    wait_until(lambda: "got SIGTERM on algo-1" in _log(server, name), "algo-1's stop", 30)
    assert len(set(re.findall(r"runs on node (\S+) of the Ray cluster", logs))) == 2, logs


def test_the_time_limit_stops_the_job_on_its_nodes(server: ApiServer, tmp_path: Path) -> None:
    sagemaker = server.client("sagemaker")
    name = unique("rayproc-limit")
    request = processing_request(
        name, image(tmp_path, WAITS), count=2, StoppingCondition={"MaxRuntimeInSeconds": 2}
    )
    try:
        sagemaker.create_processing_job(**request)
        described = wait_ended(sagemaker, name)
    finally:
        stop_all(sagemaker, [name])
    logs = _log(server, name)
    assert described["ProcessingJobStatus"] == "Stopped", (described.get("FailureReason"), logs)
    assert "MaxRuntimeInSeconds 2" in described["FailureReason"]


def test_a_job_the_cluster_cannot_hold_waits_saying_why_then_fails(
    server: ApiServer, tmp_path: Path
) -> None:
    sagemaker = server.client("sagemaker")
    name = unique("rayproc-big")
    # Three hosts, one per node, on a cluster with two nodes of the type.
    request = processing_request(name, image(tmp_path, WAITS), count=3)
    try:
        sagemaker.create_processing_job(**request)
        _wait_for_log(server, name, "waits for the Ray cluster")
        described = wait_ended(sagemaker, name)
    finally:
        stop_all(sagemaker, [name])
    said = _log(server, name)
    assert f"3 × {TYPE}, one per node" in said and "2 nodes of the Ray cluster have room" in said
    assert described["ProcessingJobStatus"] == "Failed"
    reason = described["FailureReason"]
    assert reason.startswith(f"CapacityError: the Ray cluster had no room for 3 × {TYPE}"), reason
    assert "OPENMAKER_RAY_WAIT_SECONDS" in reason


def test_a_lost_node_fails_the_job_naming_it(
    server: ApiServer, tmp_path: Path, cluster: Any
) -> None:
    sagemaker = server.client("sagemaker")
    name = unique("rayproc-lost")
    request = processing_request(name, image(tmp_path, WAITS), count=2)
    try:
        sagemaker.create_processing_job(**request)
        _wait_for_log(server, name, "waiting on algo-", 2)
        victim = next(n for n in cluster.worker_nodes if n.node_ip_address == NODES[1])
        cluster.remove_node(victim, allow_graceful=False)  # its raylet killed, as in a crash
        described = wait_ended(sagemaker, name)
    finally:
        stop_all(sagemaker, [name])
        cluster.add_node(node_ip_address=NODES[1], resources={TYPE: 1}, **NODE)
    assert described["ProcessingJobStatus"] == "Failed"
    reason = described["FailureReason"]
    assert reason.startswith("InternalServerError: host algo-"), reason
    assert f"with its node {NODES[1]} of the Ray cluster" in reason, reason
    # The surviving host was stopped, not left running.
    wait_until(lambda: "got SIGTERM on" in _log(server, name), "the other host's stop", 30)
