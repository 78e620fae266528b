"""Each host has a network of its own: its own namespace and address on its job's bridge.

Real jobs in real sandboxes: hosts that bind the same port, jobs side by side, network
isolation, the embedded S3 endpoint reached from inside, a hostile job, and nothing left behind
(also after a worker is killed).
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openmaker.runtime import network, nft_rules
from openmaker.runtime.network import PREFIX, job_id
from openmaker.settings import load_settings
from openmaker.training.service import TrainingJobs
from tests.apiserver import ApiServer
from tests.helpers import get_object, make_image, request, stop_and_wait, wait_for, wait_for_log
from tests.process_helpers import hold, wait_for_code, wait_gone, worker_pid
from tests.s3server import S3Server

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="networks of their own need root")

# Each host serves its name on 0.0.0.0:5555 and asks every other host (or itself, when alone)
# for its answer by name; `GO` (an S3 URI, optional) holds it, listening, until that object is.
EXCHANGE = f"""#!{sys.executable}
import json, os, pathlib, socket, threading, time
me = socket.gethostname()
hosts = json.loads(pathlib.Path("/opt/ml/input/config/resourceconfig.json").read_text())["hosts"]
others = [h for h in hosts if h != me] or [me]
answer = f"{{os.environ['TRAINING_JOB_NAME']}}/{{me}}".encode()
server = socket.socket()
server.bind(("0.0.0.0", 5555))
server.listen()
served, peers = threading.Event(), []
def serve():
    for _ in others:
        connection, peer = server.accept()
        peers.append(peer[0])
        connection.sendall(answer)
        connection.close()
    served.set()
threading.Thread(target=serve, daemon=True).start()
print("listening", flush=True)
if go := os.environ.get("GO"):
    import boto3
    bucket, key = go[5:].split("/", 1)
    s3 = boto3.client("s3")
    while s3.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount", 0) == 0:
        time.sleep(0.1)
answers, deadline = {{}}, time.monotonic() + 60
for other in others:
    while other not in answers:
        try:
            with socket.create_connection((other, 5555), timeout=5) as connection:
                answers[other] = connection.recv(100).decode()
        except OSError:
            assert time.monotonic() < deadline, f"{{other}} never answered"
            time.sleep(0.05)
assert served.wait(60)
pathlib.Path(f"/opt/ml/model/{{me}}.json").write_text(json.dumps({{
    "answers": answers, "netns": os.stat("/proc/self/ns/net").st_ino,
    "address": socket.gethostbyname(me), "peers": peers,
}}))
"""


def members(description: dict[str, Any]) -> dict[str, Any]:
    archive = get_object(description["ModelArtifacts"]["S3ModelArtifacts"])
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        found = {}
        for member in tar.getmembers():
            if member.isfile() and (extracted := tar.extractfile(member)) is not None:
                found[member.name] = json.loads(extracted.read())
        return found


def leftovers(name: str, netns: list[int]) -> list[str]:
    """What is left of the job's network: links, nftables tables, namespaces still held."""
    ident = PREFIX + job_id(load_settings().home, name)
    found = [f"link {link.name}" for link in Path("/sys/class/net").glob(ident + "*")]
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    found += [f"nft {line}" for line in tables.splitlines() if ident in line]
    held = {f"net:[{inode}]" for inode in netns}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            for link in [entry / "ns/net", *_fds(entry)]:
                try:
                    if os.readlink(link) in held:
                        found.append(f"namespace held by process {entry.name}")
                except OSError:
                    continue
    return found


def _fds(process: Path) -> list[Path]:
    try:
        return list((process / "fd").iterdir())
    except OSError:
        return []


def wait_clean(name: str, netns: list[int], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while left := leftovers(name, netns):
        assert time.monotonic() < deadline, f"left of {name}'s network: {left}"
        time.sleep(0.1)


@pytest.fixture
def jobs(home: Path, s3_env: S3Server) -> Iterator[TrainingJobs]:
    s3_env.make_bucket("net")
    service = TrainingJobs()
    yield service


def exchange_job(tmp_path: Path, name: str, hosts: int, **extra: Any) -> dict[str, Any]:
    body = request(name, str(make_image(tmp_path / name, EXCHANGE)), "s3://net/out", **extra)
    body["ResourceConfig"]["InstanceCount"] = hosts
    return body


def test_two_hosts_bind_the_same_port_and_reach_each_other_by_name(
    tmp_path: Path, jobs: TrainingJobs
) -> None:
    jobs.create(exchange_job(tmp_path, "pair", 2))
    try:
        description = wait_for(jobs, "pair")
    finally:
        stop_and_wait(jobs, ["pair"])
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    found = members(description)
    assert found["algo-1.json"]["answers"] == {"algo-2": "pair/algo-2"}
    assert found["algo-2.json"]["answers"] == {"algo-1": "pair/algo-1"}
    netns = [found[f"algo-{i}.json"]["netns"] for i in (1, 2)]
    assert netns[0] != netns[1]
    wait_clean("pair", netns)  # the job ended: its network went with it


def test_hosts_see_each_other_unmasqueraded_whatever_tables_a_lost_bridge_left(
    tmp_path: Path, jobs: TrainingJobs
) -> None:
    """A bridge deleted without its rules (by hand, or a node's machine lost) leaves a table
    masquerading its subnet; a later job on the same subnet must still see its hosts by their
    own addresses (MPI refuses a peer whose address it does not know)."""
    stale = f"{PREFIX}stale{os.getpid():x}"[:15]
    # The rules openmaker makes for a bridge, as if that bridge's subnet held every job's. A
    # link of the table's name stands in for the bridge, or the sweep would delete the table.
    whole = ipaddress.IPv4Network(load_settings().network_range)
    rules = nft_rules.text(network._table(stale, whole, []))
    subprocess.run(["ip", "link", "add", stale, "type", "bridge"], check=True)
    subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True)
    try:
        jobs.create(exchange_job(tmp_path, "unmasked", 2))
        try:
            description = wait_for(jobs, "unmasked")
        finally:
            stop_and_wait(jobs, ["unmasked"])
    finally:
        subprocess.run(["nft", "delete", "table", "inet", stale], check=True)
        subprocess.run(["ip", "link", "del", stale], check=True)
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    found = members(description)
    one, two = found["algo-1.json"], found["algo-2.json"]
    assert one["peers"] == [two["address"]] and two["peers"] == [one["address"]]


def test_the_sweep_deletes_a_table_whose_bridge_is_gone(home: Path) -> None:
    """A table left without its bridge (an earlier version's, a node's lost machine's) still
    masquerades its subnet: a sweep deletes it, and no table whose bridge is there."""
    whole = ipaddress.IPv4Network(load_settings().network_range)
    orphan, kept = (f"{PREFIX}{kind}{os.getpid():x}"[:15] for kind in ("orph", "kept"))
    subprocess.run(["ip", "link", "add", kept, "type", "bridge"], check=True)
    try:
        for table in (orphan, kept):
            rules = nft_rules.text(network._table(table, whole, []))
            subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True)
        TrainingJobs(load_settings())  # a command's sweep
        tables = subprocess.run(
            ["nft", "list", "tables"], capture_output=True, text=True, check=True
        ).stdout.split()
        assert orphan not in tables
        assert kept in tables
    finally:
        for table in (orphan, kept):
            subprocess.run(["nft", "delete", "table", "inet", table], capture_output=True)
        subprocess.run(["ip", "link", "del", kept], check=True)


def test_two_jobs_at_once_on_the_same_port(
    tmp_path: Path, jobs: TrainingJobs, s3_env: S3Server
) -> None:
    names = ["left", "right"]
    env = {"GO": "s3://net/go/both"}
    try:
        for name in names:
            jobs.create(exchange_job(tmp_path, name, 2, Environment=env))
        for name in names:
            wait_for_log(jobs, name, "listening")  # the port is bound in both jobs now
        s3_env.client().put_object(Bucket="net", Key="go/both", Body=b"")
        descriptions = {name: wait_for(jobs, name) for name in names}
    finally:
        stop_and_wait(jobs, names)
    for name, description in descriptions.items():
        assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
        found = members(description)
        assert found["algo-1.json"]["answers"] == {"algo-2": f"{name}/algo-2"}
        assert found["algo-2.json"]["answers"] == {"algo-1": f"{name}/algo-1"}


ISOLATED = f"""#!{sys.executable}
import json, os, pathlib, socket
seen = {{"interfaces": sorted(name for _, name in socket.if_nameindex()),
        "endpoint": os.environ.get("AWS_ENDPOINT_URL_S3"), "reached": []}}
server = socket.socket()
server.bind(("0.0.0.0", 5555))
server.listen()
with socket.create_connection(("algo-1", 5555), timeout=5):
    seen["itself"] = True
for address in json.loads(os.environ["TARGETS"]):
    try:
        socket.create_connection(tuple(address), timeout=2).close()
        seen["reached"].append(address)
    except OSError:
        pass
pathlib.Path("/opt/ml/model/seen.json").write_text(json.dumps(seen))
"""


def machine_addresses() -> list[str]:
    listed = json.loads(subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True).stdout)
    return [
        info["local"]
        for link in listed
        for info in link.get("addr_info", [])
        if not info["local"].startswith("127.") and not link["ifname"].startswith(PREFIX)
    ]


@pytest.fixture
def listener() -> Iterator[int]:
    """A service of the machine's, on every address: what no job may reach."""
    with socket.create_server(("0.0.0.0", 0)) as server:
        yield server.getsockname()[1]


def test_an_isolated_job_reaches_nothing_but_itself(
    tmp_path: Path, jobs: TrainingJobs, s3_env: S3Server, listener: int
) -> None:
    s3_port = int(s3_env.url.rsplit(":", 1)[1])
    targets = [["127.0.0.1", s3_port], ["127.0.0.1", listener]]
    targets += [[address, listener] for address in machine_addresses()]
    body = request(
        "alone", str(make_image(tmp_path / "image", ISOLATED)), "s3://net/out",
        EnableNetworkIsolation=True, Environment={"TARGETS": json.dumps(targets)},
    )  # fmt: skip
    jobs.create(body)
    try:
        description = wait_for(jobs, "alone")
    finally:
        stop_and_wait(jobs, ["alone"])
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    seen = members(description)["seen.json"]
    assert seen == {"interfaces": ["lo"], "endpoint": None, "reached": [], "itself": True}
    training = [t for t in description["SecondaryStatusTransitions"] if t["Status"] == "Training"]
    assert "network isolation" in training[0]["StatusMessage"]


EMBEDDED = f"""#!{sys.executable}
import os, pathlib, boto3
s3 = boto3.client("s3")
key = "out/" + os.environ["TRAINING_JOB_NAME"] + "/from-inside"  # its own output place
s3.put_object(Bucket=os.environ["BUCKET"], Key=key, Body=b"hello")
pathlib.Path("/opt/ml/model/key").write_text(os.environ["AWS_ACCESS_KEY_ID"])
"""


def test_the_code_reaches_the_embedded_endpoint_with_its_own_key(
    tmp_path: Path, api_server: ApiServer
) -> None:
    sagemaker, s3 = api_server.client("sagemaker"), api_server.client("s3")
    bucket = name = f"net-{os.getpid()}"
    s3.create_bucket(Bucket=bucket)
    program = make_image(tmp_path / "image", EMBEDDED)
    body = request(name, str(program), f"s3://{bucket}/out", Environment={"BUCKET": bucket})
    sagemaker.create_training_job(**body)
    deadline = time.monotonic() + 120
    while (described := sagemaker.describe_training_job(TrainingJobName=name))[
        "TrainingJobStatus"
    ] == "InProgress":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")
    assert s3.get_object(Bucket=bucket, Key=f"out/{name}/from-inside")["Body"].read() == b"hello"
    archive = s3.get_object(Bucket=bucket, Key=f"out/{name}/output/model.tar.gz")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        key = tar.extractfile("key")
        assert key is not None and key.read().startswith(b"OMJ")  # the job's own key


HOSTILE = f"""#!{sys.executable}
import json, os, pathlib, socket, subprocess
gateway = next(
    socket.inet_ntoa(bytes.fromhex(fields[2])[::-1])
    for fields in (line.split() for line in open("/proc/net/route").readlines()[1:])
    if fields[1] == "00000000"
)
tried = {{}}
targets = json.loads(os.environ["TARGETS"]) + [[gateway, int(os.environ["LISTENER"])]]
for address, port in targets:
    try:
        socket.create_connection((address, port), timeout=2).close()
        tried[f"{{address}}:{{port}}"] = "reached"
    except OSError:
        tried[f"{{address}}:{{port}}"] = "refused"
for command in (["ip", "addr", "add", "10.213.255.7/24", "dev", "eth0"],
                ["ip", "link", "set", "eth0", "address", "02:00:00:00:00:07"],
                ["ip", "link", "set", "eth0", "down"],
                ["ip", "link", "add", "sneak", "type", "bridge"]):
    done = subprocess.run(command, capture_output=True)
    tried[" ".join(command)] = "refused" if done.returncode else "done"
try:
    socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    tried["sniff"] = "done"
except OSError:
    tried["sniff"] = "refused"
try:
    pathlib.Path("/proc/sys/net/ipv4/ip_forward").write_text("1")
    tried["forwarding"] = "done"
except OSError:
    tried["forwarding"] = "refused"
pathlib.Path("/opt/ml/model/tried.json").write_text(json.dumps(tried))
"""

SERVE_UNTIL_GO = EXCHANGE.replace(
    'print("listening"', 'print("at", socket.gethostbyname(me)); print("listening"'
)


def test_a_hostile_job_cannot_reach_past_its_own_network(
    tmp_path: Path, jobs: TrainingJobs, s3_env: S3Server, listener: int
) -> None:
    victim = request(
        "victim", str(make_image(tmp_path / "victim", SERVE_UNTIL_GO)), "s3://net/out",
        Environment={"GO": "s3://net/go/victim"},
    )  # fmt: skip
    try:
        jobs.create(victim)
        wait_for_log(jobs, "victim", "listening")
        logs = "\n".join(r.message for r in jobs.iter_log_events("victim"))
        victim_address = next(line.split()[1] for line in logs.splitlines() if line[:3] == "at ")
        targets = [[victim_address, 5555], ["127.0.0.1", listener]]
        targets += [[address, listener] for address in machine_addresses()]
        hostile = request(
            "hostile", str(make_image(tmp_path / "hostile", HOSTILE)), "s3://net/out",
            Environment={"TARGETS": json.dumps(targets), "LISTENER": str(listener)},
        )  # fmt: skip
        jobs.create(hostile)
        description = wait_for(jobs, "hostile")
        s3_env.client().put_object(Bucket="net", Key="go/victim", Body=b"")
        assert wait_for(jobs, "victim")["TrainingJobStatus"] == "Completed"
    finally:
        stop_and_wait(jobs, ["victim", "hostile"])
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    tried = members(description)["tried.json"]
    assert set(tried.values()) == {"refused"}, tried
    assert len(tried) == len(targets) + 7


SLEEPER = f"""#!{sys.executable}
import os, time
print("netns", os.stat("/proc/self/ns/net").st_ino, flush=True)
time.sleep(600)
"""


def test_nothing_is_left_after_a_killed_worker_once_recovery_ran(
    tmp_path: Path, jobs: TrainingJobs
) -> None:
    body = request("killed", str(make_image(tmp_path / "image", SLEEPER)), "s3://net/out")
    body["ResourceConfig"]["InstanceCount"] = 2
    jobs.create(body)
    try:
        netns: list[int] = []
        deadline = time.monotonic() + 60
        while len(netns) < 2:  # each host's
            assert time.monotonic() < deadline, "the hosts never started"
            logs = "\n".join(r.message for r in jobs.iter_log_events("killed"))
            netns = [int(line.split()[1]) for line in logs.splitlines() if line[:6] == "netns "]
            time.sleep(0.05)
        code = hold(wait_for_code("killed"))
        pid = worker_pid(jobs, "killed")
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_gone(code, "the job's code, after its worker")
        assert leftovers("killed", []), "the bridge should outlive a killed worker"
        description = wait_for(jobs, "killed", timeout=30)  # describing runs recovery
    finally:
        stop_and_wait(jobs, ["killed"])
    assert description["TrainingJobStatus"] == "Failed"
    wait_clean("killed", netns)
