"""Jobs on a Ray cluster (OPENMAKER_EXECUTOR=ray): a real multi-node cluster on this machine
(`ray.cluster_utils.Cluster`, nodes on their own loopback addresses), started once for the
module. Each worker node stands for one ml.m5.large; the head offers none, so a job's hosts
land on the worker nodes, one per node."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from openmaker.jobs.executor import stop_fork_server, use_fork_server
from openmaker.runtime import overlay
from openmaker.runtime.overlay import node_networks, remove_node_network
from openmaker.settings import load_settings
from openmaker.training.ray_cluster import nodes
from openmaker.training.ray_hosts import node_agent
from openmaker.training.service import TrainingJobs
from tests.apiserver import running_api_server, stop_all
from tests.browser import chromium
from tests.helpers import (
    get_object,
    log_text,
    make_image,
    put_objects,
    request,
    source_of,
    start_script,
    stop_and_wait,
    unique_name,
    wait_for,
    wait_for_log,
)
from tests.process_helpers import (
    job_processes,
    kill,
    processes_mentioning,
    wait_until,
    worker_pid,
)
from tests.test_console import logged_in

ray = pytest.importorskip("ray")
ray_cluster_utils = pytest.importorskip("ray.cluster_utils")

TYPE = "ml.m5.large"
# Every node, the head included, also stands for one of these: a 3-host job of it has 3 nodes.
WIDE_TYPE = "ml.m5.xlarge"
NODE_ADDRESSES = ("127.0.0.2", "127.0.0.3")
HEAD_ADDRESS = "127.0.0.10"
WORKER_RESOURCES = {TYPE: 1, WIDE_TYPE: 1}
# Lean nodes; a node's death is seen in about a second (13 s with Ray's defaults).
NODE = {"num_cpus": 1, "object_store_memory": 80_000_000}
HEALTH = {
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "500",
    "RAY_health_check_failure_threshold": "3",
}

TWO_HOSTS = """#!/bin/sh
host=$(hostname)
echo "hello from $host"
echo "$host" > /opt/ml/model/$host.txt
mkdir -p /opt/ml/output/data && echo "data of $host" > /opt/ml/output/data/$host.txt
"""

WAITS = """#!/bin/sh
trap 'echo "got SIGTERM on $(hostname)"; exit 0' TERM
echo "waiting on $(hostname)"
while true; do sleep 0.2; done
"""


# Writes a checkpoint, then waits; a later attempt finds it and ends.
RESUMES = """#!/bin/sh
host=$(hostname)
saved=/opt/ml/checkpoints/$host.txt
if [ -f "$saved" ]; then echo "resumed on $host from $(cat "$saved")"; exit 0; fi
echo "attempt 1 of $host" > "$saved"
echo "checkpointed on $host"
trap 'exit 0' TERM
while true; do sleep 0.2; done
"""


# Two ranks, one per host, all-reduce over gloo: the hosts reach each other across their nodes.
# Each shows the interface algo-N resolves on (the job's VXLAN segment) and where it leads.
ALL_REDUCES = f"""#!{sys.executable}
import json, socket, subprocess
import torch
import torch.distributed as dist

config = json.load(open("/opt/ml/input/config/resourceconfig.json"))
hosts, me = config["hosts"], config["current_host"]
dist.init_process_group(
    "gloo", init_method="tcp://algo-1:29500", rank=hosts.index(me), world_size=len(hosts)
)
tensor = torch.tensor([float(hosts.index(me) + 1)])
dist.all_reduce(tensor)
print(f"RESULT host={{socket.gethostname()}} sum={{tensor.item()}}", flush=True)
dist.destroy_process_group()
peer = socket.gethostbyname(hosts[1 - hosts.index(me)])
for label, command in (
    ("link", "ip -d -o link show eth1"),
    ("fdb", "bridge fdb show dev eth1"),
    ("route", f"ip -o route get {{peer}}"),
):
    shown = subprocess.run(command.split(), capture_output=True, text=True).stdout
    print(f"SHOWN {{me}} {{label}}: {{' '.join(shown.split())}}", flush=True)
"""

# Lists the objects of its share of the channel.
LISTS_ITS_SHARD = """#!/bin/sh
ls /opt/ml/input/data/train > /opt/ml/model/$(hostname).files
"""


# An address of this machine that no node has: the embedded store's, as the nodes reach it.
ADVERTISED = "127.0.0.20"

# Reads an object of its channel's place through the store its code is given, with its key.
REACHES_THE_STORE = f"""#!{sys.executable}
import os, socket, boto3
url = os.environ["AWS_ENDPOINT_URL_S3"]
s3 = boto3.client("s3", region_name="us-east-1")
body = s3.get_object(Bucket="bkt", Key="shared/greeting.txt")["Body"].read().decode()
with open(f"/opt/ml/model/{{socket.gethostname()}}.txt", "w") as said:
    said.write(f"reached {{url}}: {{body}}")
"""


@contextlib.contextmanager
def local_cluster(
    head: str,
    workers: tuple[str, ...],
    head_resources: Mapping[str, float],
    worker_resources: Mapping[str, float],
) -> Iterator[Any]:
    """A Ray cluster of lean nodes on this machine, each on its own loopback address, whose
    nodes' deaths are seen in about a second."""
    saved = {name: os.environ.get(name) for name in HEALTH}
    os.environ.update(HEALTH)
    made = ray_cluster_utils.Cluster(
        initialize_head=True,
        head_node_args={
            "node_ip_address": head,
            "include_dashboard": False,
            "resources": dict(head_resources),
            **NODE,
        },
    )
    try:
        for address in workers:
            made.add_node(node_ip_address=address, resources=dict(worker_resources), **NODE)
        made.wait_for_nodes()
        yield made
    finally:
        ray.shutdown()  # this process's own connection (openmaker cluster's), if any
        made.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    # The head on 127.0.0.10: Ray takes 127.0.0.1 for the machine's own address.
    with local_cluster(HEAD_ADDRESS, NODE_ADDRESSES, {WIDE_TYPE: 1}, WORKER_RESOURCES) as made:
        yield made


@pytest.fixture
def on_ray(home: Path, cluster: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("OPENMAKER_EXECUTOR", "ray")
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    monkeypatch.setenv("OPENMAKER_STOP_GRACE_SECONDS", "5")
    yield home
    # A host lost with its node leaves its bridge there (the nodes here share this kernel).
    for job, host in node_networks(home):
        remove_node_network(home, job, host)


def _members(uri: str) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(get_object(uri))) as tar:
        return {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


def _messages(description: dict[str, Any]) -> list[str]:
    return [t.get("StatusMessage", "") for t in description["SecondaryStatusTransitions"]]


def test_two_hosts_land_on_two_nodes_with_their_logs_and_outputs(
    on_ray: Path, tmp_path: Path
) -> None:
    name = unique_name("ray-two")
    jobs = start_script(tmp_path, name, TWO_HOSTS, ResourceConfig=_resources(2))
    try:
        description = wait_for(jobs, name, timeout=300)
    finally:
        stop_and_wait(jobs, [name])
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    logs = log_text(jobs, name)
    # One host per node: each worker node holds one of them.
    assert _placed(logs) == set(NODE_ADDRESSES), logs
    assert "hello from algo-1" in logs and "hello from algo-2" in logs
    # One archive of both hosts' folders, made across the nodes.
    model = _members(description["ModelArtifacts"]["S3ModelArtifacts"])
    assert model == {"algo-1.txt": b"algo-1\n", "algo-2.txt": b"algo-2\n"}
    output = _members(description["ModelArtifacts"]["S3ModelArtifacts"].replace("model", "output"))
    assert output == {"algo-1.txt": b"data of algo-1\n", "algo-2.txt": b"data of algo-2\n"}


def test_torch_distributed_all_reduces_across_two_nodes(on_ray: Path, tmp_path: Path) -> None:
    name = unique_name("ray-torch")
    jobs = start_script(tmp_path, name, ALL_REDUCES, ResourceConfig=_resources(2))
    try:
        description = wait_for(jobs, name, timeout=300)
    finally:
        stop_and_wait(jobs, [name])
    logs = log_text(jobs, name)
    assert description["TrainingJobStatus"] == "Completed", logs
    assert _placed(logs) == set(NODE_ADDRESSES), logs
    # 1 + 2: each rank's value reached the other's node.
    assert "RESULT host=algo-1 sum=3.0" in logs, logs
    assert "RESULT host=algo-2 sum=3.0" in logs, logs
    # Over the job's segment, whose packets go between the nodes' own addresses: each host's
    # end is bound to its node and leads to the other's (the hosts share no bridge).
    shown = dict(
        line.removeprefix("SHOWN ").split(": ", 1)
        for line in logs.splitlines()
        if line.startswith("SHOWN ")
    )
    hosts = ("algo-1", "algo-2")
    vnis = {shown[f"{host} link"].split("vxlan id ")[1].split()[0] for host in hosts}
    assert len(vnis) == 1, shown
    ends = {host: shown[f"{host} link"].split(" local ")[1].split()[0] for host in hosts}
    assert set(ends.values()) == set(NODE_ADDRESSES), shown
    assert f"dst {ends['algo-2']}" in shown["algo-1 fdb"], shown
    assert f"dst {ends['algo-1']}" in shown["algo-2 fdb"], shown
    assert all(" dev eth1 " in shown[f"{host} route"] for host in hosts), shown


def test_seven_objects_are_sharded_over_three_hosts_on_three_nodes(
    on_ray: Path, tmp_path: Path
) -> None:
    name = unique_name("ray-shard")
    put_objects({f"s3://b/{name}/part-{i}": str(i).encode() for i in range(7)})

    def sharded(body: dict[str, Any]) -> None:
        source_of(body)["S3DataDistributionType"] = "ShardedByS3Key"

    jobs = start_script(
        tmp_path,
        name,
        LISTS_ITS_SHARD,
        channels={"train": f"s3://b/{name}/"},
        edit=sharded,
        ResourceConfig=_resources(3, WIDE_TYPE),
    )
    try:
        description = wait_for(jobs, name, timeout=300)
    finally:
        stop_and_wait(jobs, [name])
    logs = log_text(jobs, name)
    assert description["TrainingJobStatus"] == "Completed", logs
    assert _placed(logs) == {HEAD_ADDRESS, *NODE_ADDRESSES}, logs
    files = {
        host: listing.split()
        for host, listing in _members(description["ModelArtifacts"]["S3ModelArtifacts"]).items()
    }
    # Object i goes to host i mod 3, as SageMaker shards: each object exactly once.
    assert files == {
        "algo-1.files": [b"part-0", b"part-3", b"part-6"],
        "algo-2.files": [b"part-1", b"part-4"],
        "algo-3.files": [b"part-2", b"part-5"],
    }


def test_a_job_the_cluster_cannot_hold_waits_pending_then_fails(
    on_ray: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENMAKER_RAY_WAIT_SECONDS", "5")
    name = unique_name("ray-big")
    # Three hosts, one per node, on a cluster with two nodes of the type.
    jobs = start_script(tmp_path, name, TWO_HOSTS, ResourceConfig=_resources(3))
    try:
        description = wait_for(jobs, name, timeout=300)
    finally:
        stop_and_wait(jobs, [name])
    pending = [
        t["StatusMessage"]
        for t in description["SecondaryStatusTransitions"]
        if t["Status"] == "Pending"
    ]
    assert pending and "3 × ml.m5.large, one per node" in pending[0], pending
    assert "2 nodes of the Ray cluster have room" in pending[0]
    assert description["TrainingJobStatus"] == "Failed"
    reason = description["FailureReason"]
    assert reason.startswith("CapacityError: the Ray cluster had no room for 3 × ml.m5.large")
    assert "OPENMAKER_RAY_WAIT_SECONDS" in reason


def test_a_stop_reaches_every_host_on_its_node(on_ray: Path, tmp_path: Path) -> None:
    name = unique_name("ray-stop")
    jobs = start_script(tmp_path, name, WAITS, ResourceConfig=_resources(2))
    try:
        wait_for_log(jobs, name, "waiting on algo-1", timeout=240)
        wait_for_log(jobs, name, "waiting on algo-2", timeout=60)
        running = {host for node in nodes(load_settings()) for host in node.hosts}
        assert running == {f"{name}/algo-1", f"{name}/algo-2"}
        jobs.stop(name)
        description = wait_for(jobs, name, timeout=120)
    finally:
        stop_and_wait(jobs, [name])
    assert description["TrainingJobStatus"] == "Stopped"
    logs = log_text(jobs, name)
    assert "got SIGTERM on algo-1" in logs and "got SIGTERM on algo-2" in logs
    # The job's actors and reservation are given back, and its hosts' bridges on the nodes.
    assert _hosts_running() == set()
    assert node_networks(on_ray) == []


def test_a_later_job_runs_in_the_agents_the_first_one_started(on_ray: Path, tmp_path: Path) -> None:
    """A job's start makes no Ray actor (no Python process) once its nodes have their agent: a
    second job's hosts run in the agents the first started."""
    first, second = unique_name("ray-first"), unique_name("ray-second")
    jobs = start_script(tmp_path, first, TWO_HOSTS, ResourceConfig=_resources(2))
    try:
        assert wait_for(jobs, first, timeout=300)["TrainingJobStatus"] == "Completed"
        made = _actors()
        start_script(tmp_path, second, TWO_HOSTS, ResourceConfig=_resources(2))
        description = wait_for(jobs, second, timeout=300)
    finally:
        stop_and_wait(jobs, [first, second])
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    assert _placed(log_text(jobs, second)) == set(NODE_ADDRESSES)
    assert _actors() == made


def test_the_hosts_of_a_killed_worker_are_ended_by_their_agents(
    on_ray: Path, tmp_path: Path
) -> None:
    """The agents outlive every job: a host whose job's worker was killed (so nobody closes it)
    is stopped and closed by its agent, its code gone, as a local job's is."""
    name = unique_name("ray-orphan")
    jobs = start_script(tmp_path, name, WAITS, ResourceConfig=_resources(2))
    try:
        wait_for_log(jobs, name, "waiting on algo-1", timeout=240)
        wait_for_log(jobs, name, "waiting on algo-2", timeout=60)
        pid = worker_pid(jobs, name)
        assert pid is not None
        kill(pid)
        wait_until(lambda: not job_processes(name), "the hosts' code to end", 60)
        wait_until(lambda: not _hosts_running(), "the agents to close the hosts", 60)
        assert node_networks(on_ray) == []  # the hosts' bridges on their nodes, too
    finally:
        stop_and_wait(jobs, [name])


def test_a_lost_node_ends_the_job_naming_it(on_ray: Path, tmp_path: Path, cluster: Any) -> None:
    name = unique_name("ray-lost")
    jobs = start_script(tmp_path, name, WAITS, ResourceConfig=_resources(2))
    try:
        wait_for_log(jobs, name, "waiting on algo-1", timeout=240)
        wait_for_log(jobs, name, "waiting on algo-2", timeout=60)
        victim = next(n for n in cluster.worker_nodes if n.node_ip_address == "127.0.0.3")
        cluster.remove_node(victim, allow_graceful=False)  # its raylet killed, as in a crash
        description = wait_for(jobs, name, timeout=120)
    finally:
        stop_and_wait(jobs, [name])
        cluster.add_node(node_ip_address="127.0.0.3", resources=WORKER_RESOURCES, **NODE)
    assert description["TrainingJobStatus"] == "Failed"
    reason = description["FailureReason"]
    assert "127.0.0.3" in reason, reason
    # The surviving host was stopped, not left running.
    assert "got SIGTERM on" in log_text(jobs, name)


def test_a_server_killed_and_started_again_finds_its_hosts_running(
    on_ray: Path, tmp_path: Path, cluster: Any
) -> None:
    """The job's worker drives its actors and outlives the server (as a local job's does): the
    new server finds the job running on its nodes, untouched, and stops it there."""
    home = tmp_path / "served"
    home.mkdir()
    image = make_image(tmp_path / "image", WAITS)
    # Outputs to a folder: the restarted server's embedded store is on another port.
    body = request("ray-served", str(image), (tmp_path / "out").as_uri())
    body["ResourceConfig"] = _resources(2)
    ray_env = {"OPENMAKER_EXECUTOR": "ray", "RAY_ADDRESS": cluster.address}
    hosts = {"ray-served/algo-1", "ray-served/algo-2"}
    try:
        with running_api_server(home, **ray_env) as server:
            server.client("sagemaker").create_training_job(**body)
            wait_until(lambda: _hosts_running() == hosts, "both hosts on their nodes", 240)
            kill(server.process.pid)
            server.process.wait()
        (home / "server.json").unlink()  # kill -9 leaves the server's record behind
        with running_api_server(home, **ray_env) as server:
            client = server.client("sagemaker")
            described = client.describe_training_job(TrainingJobName="ray-served")
            assert (described["TrainingJobStatus"], described["SecondaryStatus"]) == (
                "InProgress",
                "Training",
            )
            assert _hosts_running() == hosts  # the same actors, on their nodes
            client.stop_training_job(TrainingJobName="ray-served")

            def stopped() -> bool:
                described = client.describe_training_job(TrainingJobName="ray-served")
                return described["TrainingJobStatus"] == "Stopped"

            wait_until(stopped, "the job to stop", 120)
        wait_until(lambda: not _hosts_running(), "the hosts' actors to end", 60)
    finally:
        for pid in job_processes("ray-served") + processes_mentioning(str(home)):
            with contextlib.suppress(ProcessLookupError):
                kill(pid)


def test_hosts_on_their_nodes_reach_the_embedded_store_at_the_advertised_address(
    on_ray: Path, tmp_path: Path, cluster: Any
) -> None:
    home = tmp_path / "advertised"
    home.mkdir()
    image = make_image(tmp_path / "image", REACHES_THE_STORE)
    body = request("ray-store", str(image), "s3://bkt/out", {"shared": "s3://bkt/shared/"})
    body["ResourceConfig"] = _resources(2)
    env = {
        "OPENMAKER_EXECUTOR": "ray",
        "RAY_ADDRESS": cluster.address,
        "OPENMAKER_ADVERTISE_ADDRESS": ADVERTISED,
    }
    try:
        with running_api_server(home, **env) as server:
            s3 = server.client("s3")
            s3.create_bucket(Bucket="bkt")
            s3.put_object(Bucket="bkt", Key="shared/greeting.txt", Body=b"hello")
            sagemaker = server.client("sagemaker")
            sagemaker.create_training_job(**body)

            def ended() -> bool:
                described = sagemaker.describe_training_job(TrainingJobName="ray-store")
                return described["TrainingJobStatus"] in ("Completed", "Failed", "Stopped")

            wait_until(ended, "the job to end", 240)
            described = sagemaker.describe_training_job(TrainingJobName="ray-store")
            events = server.client("logs").filter_log_events(
                logGroupName="/aws/sagemaker/TrainingJobs", logStreamNamePrefix="ray-store/"
            )["events"]
            logs = "\n".join(e["message"] for e in events)
            assert described["TrainingJobStatus"] == "Completed", logs
            bucket, key = described["ModelArtifacts"]["S3ModelArtifacts"][5:].split("/", 1)
            archive = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    finally:
        for pid in job_processes("ray-store") + processes_mentioning(str(home)):
            with contextlib.suppress(ProcessLookupError):
                kill(pid)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        said = {m.name: tar.extractfile(m).read().decode() for m in tar if m.isfile()}  # type: ignore[union-attr]
    # Each host's code, on its own node, read through the store's advertised address.
    for host in ("algo-1", "algo-2"):
        assert said[f"{host}.txt"].startswith(f"reached http://{ADVERTISED}:"), said
        assert said[f"{host}.txt"].endswith(": hello"), said


# Says what its channel holds (fetched by its host through the gate), then waits.
SAYS_ITS_CHANNEL_AND_WAITS = """#!/bin/sh
echo "channel says $(cat /opt/ml/input/data/mine/mine.txt)"
trap 'exit 0' TERM
while true; do sleep 0.2; done
"""


def test_hosts_reach_the_store_through_the_gate_with_a_key_of_the_jobs_own(
    on_ray: Path, tmp_path: Path, cluster: Any
) -> None:
    """A Ray host's transfers use a key of the job's hosts at the server's S3 endpoint (no
    folder of this machine's): it reaches the job's channel, never another job's data, and
    dies with the job."""
    home = tmp_path / "keyed"
    home.mkdir()
    image = make_image(tmp_path / "image", SAYS_ITS_CHANNEL_AND_WAITS)
    body = request("ray-keyed", str(image), "s3://bkt/out", {"mine": "s3://bkt/mine/"})
    body["ResourceConfig"] = _resources(2)
    body["CheckpointConfig"] = {"S3Uri": "s3://bkt/keyed-checkpoints/"}
    env = {"OPENMAKER_EXECUTOR": "ray", "RAY_ADDRESS": cluster.address}
    try:
        with running_api_server(home, **env) as server:
            s3 = server.client("s3")
            s3.create_bucket(Bucket="bkt")
            s3.put_object(Bucket="bkt", Key="mine/mine.txt", Body=b"mine")
            s3.put_object(Bucket="bkt", Key="theirs/secret.txt", Body=b"another job's")
            sagemaker = server.client("sagemaker")
            sagemaker.create_training_job(**body)
            logs = server.client("logs")

            def said() -> str:
                events = logs.filter_log_events(
                    logGroupName="/aws/sagemaker/TrainingJobs", logStreamNamePrefix="ray-keyed/"
                )["events"]
                return "\n".join(e["message"] for e in events)

            wait_until(lambda: said().count("channel says mine") == 2, "both hosts' data", 240)
            key_id, secret = _hosts_key(home, "ray-keyed")
            as_hosts = server.client("s3", aws_access_key_id=key_id, aws_secret_access_key=secret)
            assert as_hosts.get_object(Bucket="bkt", Key="mine/mine.txt")["Body"].read() == b"mine"
            as_hosts.put_object(Bucket="bkt", Key="keyed-checkpoints/c", Body=b"c")
            refused: list[tuple[str, dict[str, Any]]] = [
                ("get_object", {"Key": "theirs/secret.txt"}),
                ("list_objects_v2", {"Prefix": "theirs/"}),
                ("put_object", {"Key": "theirs/x", "Body": b"x"}),
            ]
            for method, arguments in refused:
                with pytest.raises(botocore.exceptions.ClientError) as denied:
                    getattr(as_hosts, method)(Bucket="bkt", **arguments)
                assert denied.value.response["Error"]["Code"] == "AccessDenied"
            sagemaker.stop_training_job(TrainingJobName="ray-keyed")

            def stopped() -> bool:
                described = sagemaker.describe_training_job(TrainingJobName="ray-keyed")
                return described["TrainingJobStatus"] == "Stopped"

            wait_until(stopped, "the job to stop", 120)
            # The key died with the job.
            with pytest.raises(botocore.exceptions.ClientError) as revoked:
                as_hosts.get_object(Bucket="bkt", Key="mine/mine.txt")
            assert revoked.value.response["Error"]["Code"] == "InvalidAccessKeyId"
    finally:
        for pid in job_processes("ray-keyed") + processes_mentioning(str(home)):
            with contextlib.suppress(ProcessLookupError):
                kill(pid)


def _hosts_key(home: Path, job: str) -> tuple[str, str]:
    """The key the job's worker minted for its hosts (its record in the gate's folder)."""
    found = [
        (path.stem, record["secret_access_key"])
        for path in (home / "gate" / "keys").glob("*.json")
        for record in [json.loads(path.read_text())]
        if record["job"] == job and record.get("holder") == "hosts"
    ]
    assert len(found) == 1, found
    return found[0]


def _placed(logs: str) -> set[str]:
    """The nodes the job's hosts ran on, as its log says."""
    return {
        line.split(" on node ")[1].split()[0]
        for line in logs.splitlines()
        if " runs on node " in line
    }


def _hosts_running() -> set[str]:
    return {host for node in nodes(load_settings()) for host in node.hosts}


def _actors() -> set[str]:
    """Every actor the cluster has made, alive or not."""
    from ray._private import state

    return set(state.actors())


def _statuses(description: dict[str, Any]) -> list[str]:
    return [t["Status"] for t in description["SecondaryStatusTransitions"]]


def _resources(count: int, instance_type: str = TYPE) -> dict[str, Any]:
    return {"InstanceType": instance_type, "InstanceCount": count, "VolumeSizeInGB": 5}


def test_openmaker_cluster_shows_the_nodes(on_ray: Path) -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "openmaker.cli.app", "cluster"],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ | {"COLUMNS": "200"},
    )
    assert shown.returncode == 0, shown.stderr
    for address in ("127.0.0.10", *NODE_ADDRESSES):
        assert address in shown.stdout
    assert f"1 × {TYPE}" in shown.stdout  # what the worker nodes stand for


def test_openmaker_cluster_says_when_the_cluster_does_not_answer(tmp_path: Path) -> None:
    """Ray retries an address where nothing listens for minutes: the command gives up after
    OPENMAKER_RAY_ANSWER_SECONDS and says why, instead of hanging."""
    shown = subprocess.run(
        [sys.executable, "-m", "openmaker.cli.app", "cluster"],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ
        | {
            "OPENMAKER_HOME": str(tmp_path),
            "RAY_ADDRESS": "127.0.0.1:1",
            "OPENMAKER_RAY_ANSWER_SECONDS": "2",
        },
    )
    assert shown.returncode == 1
    assert "the Ray cluster at 127.0.0.1:1 has not answered in 2 seconds" in shown.stderr


# Host algo-1 shows its end of the job's segment and says each datagram it gets on port 9999.
LISTENS_ON_THE_SEGMENT = f"""#!{sys.executable}
import json, signal, socket, subprocess, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
config = json.load(open("/opt/ml/input/config/resourceconfig.json"))
if config["current_host"] != "algo-1":
    while True:
        time.sleep(0.2)
listening = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
listening.bind(("0.0.0.0", 9999))
for command in ("ip -d -o link show eth1", "ip -4 -o addr show eth1"):
    shown = subprocess.run(command.split(), capture_output=True, text=True).stdout
    print(f"SHOWN {{' '.join(shown.split())}}", flush=True)
print("LISTENING", flush=True)
while True:
    print(f"GOT {{listening.recv(100).decode()}}", flush=True)
"""


def _vxlan_frame(vni: int, source: tuple[str, str], target: tuple[str, str], said: bytes) -> bytes:
    """A VXLAN packet's payload: the frame of an IPv4 UDP datagram to port 9999 of `target`
    (its MAC, address) from `source`."""
    udp = struct.pack("!HHHH", 40000, 9999, 8 + len(said), 0) + said
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0,
        socket.inet_aton(source[1]), socket.inet_aton(target[1]),
    )  # fmt: skip
    total = sum(struct.unpack("!10H", header))
    total = (total & 0xFFFF) + (total >> 16)
    checksum = ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF
    header = header[:10] + struct.pack("!H", checksum) + header[12:]
    ethernet = bytes.fromhex((target[0] + source[0]).replace(":", "")) + b"\x08\x00"
    return struct.pack("!II", 0x08 << 24, vni << 8) + ethernet + header + udp


def test_a_hosts_end_of_the_overlay_takes_frames_from_its_jobs_nodes_alone(
    on_ray: Path, tmp_path: Path
) -> None:
    """A frame of the job's VNI sent to a host's node from an address that is not one of the
    job's other nodes never reaches the host; the same from the other node does. The node's
    table for it goes with the job."""
    name = unique_name("ray-inject")
    jobs = start_script(tmp_path, name, LISTENS_ON_THE_SEGMENT, ResourceConfig=_resources(2))
    try:
        wait_for_log(jobs, name, "LISTENING", timeout=240)
        logs = log_text(jobs, name)
        link, addresses = [line for line in logs.splitlines() if line.startswith("SHOWN ")]
        vni = int(link.split("vxlan id ")[1].split()[0])
        node = link.split(" local ")[1].split()[0]
        port = int(link.split(" dstport ")[1].split()[0])
        other = next(address for address in NODE_ADDRESSES if address != node)
        target = (overlay.mac(vni, 0), addresses.split(" inet ")[1].split("/")[0])
        peer = (overlay.mac(vni, 1), str(ipaddress.ip_address(target[1]) + 1))
        # One CPU: the two packets are taken in the order they were sent.
        cpus = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(cpus)})
        try:
            for sender, said in ((HEAD_ADDRESS, b"from-stranger"), (other, b"from-member")):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
                    out.bind((sender, 0))
                    out.sendto(_vxlan_frame(vni, peer, target, said), (node, port))
        finally:
            os.sched_setaffinity(0, cpus)
        wait_for_log(jobs, name, "GOT from-member", timeout=60)
        assert "GOT from-stranger" not in log_text(jobs, name)
        jobs.stop(name)
        wait_for(jobs, name, timeout=120)
    finally:
        stop_and_wait(jobs, [name])
    # This job's (other tests, another run, may have tables of their own meanwhile).
    guards = {overlay._guard_table(on_ray, name, host) for host in ("algo-1", "algo-2")}
    listed = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True)
    assert not guards & set(listed.stdout.split())


def actor_gone(name: str) -> bool:
    """Whether Ray's detached actor `name` (of openmaker's namespace) is no more."""
    from openmaker.training.host.ray_actor import NAMESPACE

    try:
        ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return True
    return False


def test_agents_of_other_code_are_retired_and_new_ones_run_the_hosts(
    on_ray: Path, tmp_path: Path
) -> None:
    """A server whose code is not the agents' (an upgrade) has its hosts run in agents of its
    own code, which end the earlier agents of their nodes once these run no host."""
    from openmaker.training.host.ray_actor import AGENT_PREFIX, NAMESPACE, agent_name
    from openmaker.training.ray_cluster import connect

    class EarlierAgent:
        """An agent of earlier code as this code sees it: named after its node alone, it says
        which hosts it runs."""

        def hosts(self) -> list[str]:
            return []

    connect(load_settings())
    workers = [
        n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeManagerAddress"] in NODE_ADDRESSES
    ]

    # This code's agents made by earlier tests are idle: ended, so that the job makes them anew.
    for node in workers:
        with contextlib.suppress(ValueError):
            ray.kill(ray.get_actor(agent_name(node), namespace=NAMESPACE))
        wait_until(functools.partial(actor_gone, agent_name(node)), "this code's agent to end", 30)
    earlier = [AGENT_PREFIX + node for node in workers]
    for node, old in zip(workers, earlier, strict=True):
        assert ray.get(node_agent(EarlierAgent, old, node).hosts.remote()) == []
    name = unique_name("ray-upgraded")
    jobs = start_script(tmp_path, name, TWO_HOSTS, ResourceConfig=_resources(2))
    try:
        description = wait_for(jobs, name, timeout=300)
        for old in earlier:
            wait_until(functools.partial(actor_gone, old), "the earlier agents to be retired", 30)
    finally:
        stop_and_wait(jobs, [name])
        for old in earlier:
            with contextlib.suppress(ValueError):
                ray.kill(ray.get_actor(old, namespace=NAMESPACE))
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    assert all(not actor_gone(agent_name(node)) for node in workers)


# Says whether it reaches its store's endpoint, a port of a node of the cluster, and the same
# port at another address of that node's machine that is no node's.
PROBES_THE_NODES = f"""#!{sys.executable}
import os, socket
from urllib.parse import urlparse

def reaches(address, port):
    try:
        socket.create_connection((address, int(port)), timeout=2).close()
    except OSError as exc:
        return f"not reached ({{exc}})"
    return "reached"

store = urlparse(os.environ["AWS_ENDPOINT_URL_S3"])
print(f"STORE {{reaches(store.hostname, store.port)}}", flush=True)
print(f"NOT A NODE {{reaches(os.environ['NOT_A_NODE'], os.environ['NODE_PORT'])}}", flush=True)
print(f"NODE {{reaches(os.environ['NODE'], os.environ['NODE_PORT'])}}", flush=True)
"""

# A machine of the cluster's that is not this one: a network namespace behind a veth pair.
FAR_SUBNET = "198.51.100"
FAR_NODE, FAR_OTHER = f"{FAR_SUBNET}.2", f"{FAR_SUBNET}.3"


@contextlib.contextmanager
def _far_node(cluster: Any) -> Iterator[tuple[int, socket.socket]]:
    """A Ray node on another machine (its raylet in a namespace of its own, at FAR_NODE), and a
    listening socket there standing for a store on that machine: (the raylet's port, it)."""
    namespace, veth = f"rayfar{os.getpid()}", f"rf{os.getpid()}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    started: list[subprocess.Popen[bytes]] = []
    try:
        for where, commands in (
            ([], f"link add {veth} type veth peer name eth0 netns {namespace}\n"),
            ([], f"addr add {FAR_SUBNET}.1/24 dev {veth}\nlink set {veth} up\n"),
            (
                ["-n", namespace],
                f"addr add {FAR_NODE}/24 dev eth0\naddr add {FAR_OTHER}/24 dev eth0\n"
                f"link set eth0 up\nlink set lo up\nroute add default via {FAR_SUBNET}.1\n",
            ),
        ):
            subprocess.run(["ip", *where, "-batch", "-"], input=commands.encode(), check=True)
        Path(f"/proc/sys/net/ipv4/conf/{veth}/forwarding").write_text("1")
        gcs_port = cluster.address.rpartition(":")[2]
        ray_command = str(Path(sys.executable).parent / "ray")
        started.append(
            subprocess.Popen(
                ["ip", "netns", "exec", namespace, ray_command, "start", "--block",
                 f"--address={FAR_SUBNET}.1:{gcs_port}", f"--node-ip-address={FAR_NODE}",
                 "--num-cpus=0", "--object-store-memory=80000000"],
                start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        )  # fmt: skip

        def registered() -> dict[str, Any] | None:
            return next(
                (n for n in ray.nodes() if n["NodeManagerAddress"] == FAR_NODE and n["Alive"]),
                None,
            )

        wait_until(lambda: registered() is not None, "the far node to join", 60)
        node = registered()
        assert node is not None
        with _listening_in(namespace) as store:
            yield node["NodeManagerPort"], store
    finally:
        for process in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        left = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
        for pid in left.stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", namespace], check=False)


@contextlib.contextmanager
def _listening_in(namespace: str) -> Iterator[socket.socket]:
    """A TCP socket listening on every address of the network namespace."""
    made: list[socket.socket] = []

    def inside() -> None:  # a thread's namespace is its own; the socket keeps the one it had
        libc = ctypes.CDLL(None, use_errno=True)
        with open(f"/run/netns/{namespace}") as handle:
            assert libc.setns(handle.fileno(), 0x40000000) == 0
        listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listening.bind(("0.0.0.0", 0))
        listening.listen(16)
        made.append(listening)

    thread = threading.Thread(target=inside)
    thread.start()
    thread.join()
    try:
        yield made[0]
    finally:
        made[0].close()


def test_a_hosts_code_reaches_no_node_of_the_cluster_but_its_store(
    on_ray: Path, tmp_path: Path, cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The code on a node reaches neither another node's Ray services (a raylet on another
    machine) nor anything else at that node's address, but its store's endpoint there; that
    machine's other addresses (no node's) it does reach."""
    from openmaker.training.ray_cluster import connect

    connect(load_settings())
    name = unique_name("ray-probe")
    with _far_node(cluster) as (raylet_port, store):
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://{FAR_NODE}:{store.getsockname()[1]}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "probe")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "probe")
        environment = {"NODE": FAR_NODE, "NOT_A_NODE": FAR_OTHER, "NODE_PORT": str(raylet_port)}
        jobs = start_script(
            tmp_path,
            name,
            PROBES_THE_NODES,
            (tmp_path / "out").as_uri(),
            ResourceConfig=_resources(2),
            Environment=environment,
        )
        try:
            description = wait_for(jobs, name, timeout=300)
        finally:
            stop_and_wait(jobs, [name])
    logs = log_text(jobs, name)
    assert description["TrainingJobStatus"] == "Completed", logs
    assert logs.count("STORE reached") == 2, logs
    assert logs.count("NOT A NODE reached") == 2, logs
    assert logs.count("NODE not reached") == 2, logs


def test_a_jobs_next_attempt_reaches_the_store_where_the_server_started_again_serves_it(
    on_ray: Path, tmp_path: Path, cluster: Any
) -> None:
    """A node lost restarts the job with its checkpoints, on a new node once one joins. Here
    the job's worker has outlived its server, and the server started again serves the store on
    another port: the next attempt, started by that worker, restores the checkpoints through
    the gate served now."""
    home = tmp_path / "moved"
    home.mkdir()
    image = make_image(tmp_path / "image", RESUMES)
    body = request("ray-moved", str(image), "s3://bkt/out")
    body["ResourceConfig"] = _resources(2)
    body["CheckpointConfig"] = {"S3Uri": "s3://bkt/moved-checkpoints"}
    body["RetryStrategy"] = {"MaximumRetryAttempts": 1}
    env = {"OPENMAKER_EXECUTOR": "ray", "RAY_ADDRESS": cluster.address}
    saved = {"moved-checkpoints/algo-1.txt", "moved-checkpoints/algo-2.txt"}
    replaced = False
    try:
        with running_api_server(home, **env) as server:
            s3 = server.client("s3")
            s3.create_bucket(Bucket="bkt")
            server.client("sagemaker").create_training_job(**body)

            def checkpointed() -> bool:
                listed = s3.list_objects_v2(Bucket="bkt", Prefix="moved-checkpoints/")
                return {o["Key"] for o in listed.get("Contents", [])} == saved

            wait_until(checkpointed, "both hosts' checkpoints", 240)
            kill(server.process.pid)
            server.process.wait()
        (home / "server.json").unlink()  # kill -9 leaves the server's record behind
        with running_api_server(home, **env) as server:
            sagemaker = server.client("sagemaker")
            victim = next(n for n in cluster.worker_nodes if n.node_ip_address == "127.0.0.3")
            cluster.remove_node(victim, allow_graceful=False)

            def restarting() -> bool:
                described = sagemaker.describe_training_job(TrainingJobName="ray-moved")
                return "Restarting" in _statuses(described)

            wait_until(restarting, "the restart", 60)
            cluster.add_node(node_ip_address="127.0.0.3", resources=WORKER_RESOURCES, **NODE)
            replaced = True

            def ended() -> bool:
                described = sagemaker.describe_training_job(TrainingJobName="ray-moved")
                return described["TrainingJobStatus"] in ("Completed", "Failed", "Stopped")

            wait_until(ended, "the job to end", 240)
            described = sagemaker.describe_training_job(TrainingJobName="ray-moved")
            events = server.client("logs").filter_log_events(
                logGroupName="/aws/sagemaker/TrainingJobs", logStreamNamePrefix="ray-moved/"
            )["events"]
            logs = "\n".join(e["message"] for e in events)
    finally:
        for pid in job_processes("ray-moved") + processes_mentioning(str(home)):
            with contextlib.suppress(ProcessLookupError):
                kill(pid)
        if not replaced:
            cluster.add_node(node_ip_address="127.0.0.3", resources=WORKER_RESOURCES, **NODE)
    assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")
    restart = next(
        t["StatusMessage"]
        for t in described["SecondaryStatusTransitions"]
        if t["Status"] == "Restarting"
    )
    assert "127.0.0.3" in restart and "attempt 2 of 2" in restart, restart
    # Each host of attempt 2 found the checkpoint its host of attempt 1 wrote.
    assert "resumed on algo-1 from attempt 1 of algo-1" in logs, logs
    assert "resumed on algo-2 from attempt 1 of algo-2" in logs, logs


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_the_consoles_capacity_page_shows_the_nodes_and_their_hosts(
    on_ray: Path, tmp_path: Path, cluster: Any
) -> None:
    """Under OPENMAKER_EXECUTOR=ray the console's capacity page shows every node of the cluster
    with its CPUs, and a running job's hosts on the worker nodes holding them."""
    home = tmp_path / "served"
    home.mkdir()
    name = unique_name("ray-console")
    body = request(name, str(make_image(tmp_path / "image", WAITS)), (tmp_path / "out").as_uri())
    body["ResourceConfig"] = _resources(2)
    ray_env = {"OPENMAKER_EXECUTOR": "ray", "RAY_ADDRESS": cluster.address}
    # The live nodes: a node removed by an earlier test stays listed, not alive.
    nodes_shown = (
        "[...document.querySelectorAll('#nodes tr[data-node]')]"
        ".filter(r => r.children[1].innerText === 'yes')"
    )
    with running_api_server(home, **ray_env) as server, chromium(tmp_path / "chromium") as page:
        sagemaker = server.client("sagemaker")
        try:
            sagemaker.create_training_job(**body)
            logged_in(page, server)
            page.view("#/machine")
            # The first ask loads Ray in the server and joins the cluster.
            page.wait_for(f"{nodes_shown}.length === 3", 120)
            cpus = page.evaluate(
                f"Object.fromEntries({nodes_shown}.map(r => [r.dataset.node, "
                "r.querySelector('.cpus').innerText]))"
            )
            assert set(cpus) == {HEAD_ADDRESS, *NODE_ADDRESSES}
            assert all(shown.endswith(" of 1") for shown in cpus.values()), cpus
            hosts = (
                f"Object.fromEntries({nodes_shown}.map(r => [r.dataset.node, "
                "r.querySelector('.hosts').innerText.split('\\n').filter(h => h)]))"
            )
            # One host on each worker node, none on the head (it stands for no ml.m5.large).
            page.wait_for(
                f"Object.values({hosts}).flat().filter(h => h.startsWith('{name}/')).length === 2",
                240,
            )
            placed = page.evaluate(hosts)
            assert placed[HEAD_ADDRESS] == []
            assert sorted(placed[a][0] for a in NODE_ADDRESSES) == [
                f"{name}/algo-1",
                f"{name}/algo-2",
            ], placed
            # Each worker node's instance is in use, by its host.
            for address in NODE_ADDRESSES:
                page.wait_for(
                    f"{nodes_shown}.some(r => r.dataset.node === '{address}' && "
                    f"r.querySelector('.types').innerText.includes('1 of 1 × {TYPE}'))"
                )
            assert page.text("#problem") == ""
            page.screenshot(tmp_path / "cluster.png")
        finally:
            stop_all(sagemaker, [name])
    wait_until(lambda: not _hosts_running(), "the hosts' actors to end", 60)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_the_consoles_capacity_page_says_when_the_cluster_cannot_be_asked(tmp_path: Path) -> None:
    """A RAY_ADDRESS Ray refuses: the cluster's part of the page is a message naming it, and the
    rest of the page is drawn."""
    home = tmp_path / "served"
    home.mkdir()
    ray_env = {"OPENMAKER_EXECUTOR": "ray", "RAY_ADDRESS": "no-port-here"}
    with (
        running_api_server(home, **ray_env) as server,
        chromium(tmp_path / "chromium") as page,
    ):
        logged_in(page, server)
        page.view("#/machine")
        # Under load, loading Ray may outlast a request's wait: that answer says so, and the
        # next request waits for the same ask.
        page.wait_for(
            "document.querySelector('#cluster .problem')?.innerText"
            ".startsWith('cannot reach the Ray cluster at no-port-here: ')",
            120,
        )
        assert page.text("#problem") == ""
        assert "Nothing runs now." in page.text("main")
        page.screenshot(tmp_path / "cluster-unreachable.png")


GPU_TYPE = "ml.g4dn.xlarge"  # one GPU per instance
GPU_NODE = "127.0.0.4"
SHOWS_ITS_GPUS = """#!/bin/sh
trap 'exit 0' TERM
echo "gpus=[$CUDA_VISIBLE_DEVICES]"
while true; do sleep 0.2; done
"""


def test_each_host_gets_the_gpus_ray_reserved_for_it(
    on_ray: Path, tmp_path: Path, cluster: Any
) -> None:
    """Two one-GPU jobs at once on a node of two (declared) GPUs: each host's code is shown the
    GPU its reservation holds there, and the two are not the same."""
    node = cluster.add_node(node_ip_address=GPU_NODE, num_gpus=2, resources={GPU_TYPE: 2}, **NODE)
    names = [unique_name("ray-gpu"), unique_name("ray-gpu")]
    jobs = TrainingJobs()
    try:
        for name in names:
            gpu = _resources(1, GPU_TYPE)
            start_script(tmp_path / name, name, SHOWS_ITS_GPUS, ResourceConfig=gpu)
        for name in names:
            wait_for_log(jobs, name, "gpus=[", timeout=240)
        shown = [re.findall(r"gpus=\[(.*)\]", log_text(jobs, name)) for name in names]
        placed = [_placed(log_text(jobs, name)) for name in names]
    finally:
        stop_and_wait(jobs, names)
        cluster.remove_node(node)
    assert placed == [{GPU_NODE}, {GPU_NODE}]
    assert sorted(shown) == [["0"], ["1"]], shown


def test_a_job_forked_from_a_fork_server_that_loaded_ray_runs_on_the_cluster(
    on_ray: Path, tmp_path: Path
) -> None:
    """`openmaker server` under OPENMAKER_EXECUTOR=ray forks its workers with Ray loaded: the
    fork server holds no thread and no file for it, and a worker forked from it joins the
    cluster and runs its job's hosts."""
    use_fork_server(["openmaker.training.worker"], "ray")
    name = unique_name("ray-forked")
    jobs = TrainingJobs()
    try:
        start_script(tmp_path, name, TWO_HOSTS, ResourceConfig=_resources(2))
        description = wait_for(jobs, name, timeout=300)
        # The job's worker came from it, so it had loaded Ray by then.
        (server,) = [
            pid
            for pid in processes_mentioning("openmaker.jobs.forkserver")
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
            == str(os.getpid())
        ]
        assert "_raylet" in Path(f"/proc/{server}/maps").read_text()
        assert os.listdir(f"/proc/{server}/task") == [str(server)]
        assert sorted(os.listdir(f"/proc/{server}/fd")) == ["0", "1", "2"]
    finally:
        stop_and_wait(jobs, [name])
        stop_fork_server()
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    assert _placed(log_text(jobs, name)) == set(NODE_ADDRESSES)
