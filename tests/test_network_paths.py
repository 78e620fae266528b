"""The paths out of a host's own network, and those that must stay shut: a resolver on the
machine's loopback, the world outside through the masquerade (also where iptables' FORWARD
drops by default, as with Docker), no IPv6, and no port of the machine's but the S3 endpoint's.

Real jobs in real sandboxes, a real resolver (Debian's dnsmasq), and a real "outside": another
network namespace behind a veth pair that is not the job's bridge.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from openmaker.runtime.network import PREFIX, job_id
from openmaker.settings import load_settings
from openmaker.training.service import TrainingJobs
from tests.apiserver import ApiServer
from tests.helpers import make_image, request, stop_and_wait, unique_name, wait_for
from tests.s3server import S3Server
from tests.test_network import members

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="networks of their own need root")


@pytest.fixture
def jobs(home: Path, s3_env: S3Server) -> Iterator[TrainingJobs]:
    s3_env.make_bucket("paths")
    yield TrainingJobs()


def run_job(
    jobs: TrainingJobs, tmp_path: Path, name: str, program: str, **extra: Any
) -> dict[str, Any]:
    """Run one job whose code writes /opt/ml/model/seen.json; what it saw."""
    body = request(name, str(make_image(tmp_path / name, program)), "s3://paths/out", **extra)
    jobs.create(body)
    try:
        description = wait_for(jobs, name)
    finally:
        stop_and_wait(jobs, [name])
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    seen: dict[str, Any] = members(description)["seen.json"]
    return seen


# --- a resolver on the machine's loopback -------------------------------------------------

RESOLVER = "127.0.0.77"
NAME, ANSWER = "answer.openmaker.test", "192.0.2.77"

RESOLVE = f"""#!{sys.executable}
import json, pathlib, socket, struct
seen = {{"resolv.conf": pathlib.Path("/etc/resolv.conf").read_text()}}
try:
    seen["udp"] = socket.gethostbyname("{NAME}")  # the C library's resolver: UDP
except OSError as exc:
    seen["udp"] = repr(exc)
# The same question over TCP (a DNS message with its length before it).
question = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0)
question += b"".join(bytes([len(p)]) + p.encode() for p in "{NAME}".split(".")) + b"\\0"
question += struct.pack(">HH", 1, 1)
try:
    with socket.create_connection(("{RESOLVER}", 53), timeout=10) as connection:
        connection.sendall(struct.pack(">H", len(question)) + question)
        data = b""
        while len(data) < 2 or len(data) < 2 + struct.unpack(">H", data[:2])[0]:
            data += connection.recv(4096) or b"!"
        seen["tcp"] = socket.inet_ntoa(data[-4:])
except OSError as exc:
    seen["tcp"] = repr(exc)
pathlib.Path("/opt/ml/model/seen.json").write_text(json.dumps(seen))
"""


def resolves(address: str) -> bool:
    """Whether the resolver at `address` answers the test name (over UDP, from the machine)."""
    query = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0)
    query += b"".join(bytes([len(p)]) + p.encode() for p in NAME.split(".")) + b"\0"
    query += struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.settimeout(1)
        try:
            probe.sendto(query, (address, 53))
            return probe.recv(512)[-4:] == socket.inet_aton(ANSWER)
        except OSError:
            return False


@pytest.fixture
def loopback_resolver(tmp_path: Path) -> Iterator[Path]:
    """dnsmasq on 127.0.0.77:53 answering one name from a hosts file; the resolv.conf that
    names it."""
    if shutil.which("dnsmasq") is None:
        pytest.fail("dnsmasq (Debian package dnsmasq-base) is not installed: scripts/install.sh")
    (tmp_path / "hosts").write_text(f"{ANSWER} {NAME}\n")
    conf = tmp_path / "resolv.conf"
    conf.write_text(f"# the test's\nnameserver {RESOLVER}\noptions timeout:2 attempts:2\n")
    server = subprocess.Popen(
        [
            "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
            "--no-hosts", f"--addn-hosts={tmp_path / 'hosts'}", f"--listen-address={RESOLVER}",
            "--bind-interfaces", "--port=53", "--user=root", "--pid-file=",
        ]
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not resolves(RESOLVER):
            assert server.poll() is None, "dnsmasq ended"
            assert time.monotonic() < deadline, "dnsmasq never answered"
        yield conf
    finally:
        server.terminate()
        server.wait()


def test_a_resolver_on_the_machines_loopback_answers_the_hosts(
    tmp_path: Path,
    home: Path,
    s3_env: S3Server,
    loopback_resolver: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENMAKER_RESOLV_CONF", str(loopback_resolver))
    s3_env.make_bucket("paths")
    seen = run_job(TrainingJobs(), tmp_path, "resolve", RESOLVE)
    assert seen == {"resolv.conf": loopback_resolver.read_text(), "udp": ANSWER, "tcp": ANSWER}


# --- the world outside, through the masquerade --------------------------------------------


@dataclass
class Outside:
    """A network beyond the machine: a namespace behind a veth pair, with a listener that
    answers each connection with the address it came from."""

    address: str  # the listener's
    machine: str  # the machine's own address towards it
    port: int


REACH_OUT = f"""#!{sys.executable}
import json, os, pathlib, socket
seen = {{"host": socket.gethostbyname(socket.gethostname())}}
try:
    outside = (os.environ["OUTSIDE"], int(os.environ["PORT"]))
    with socket.create_connection(outside, timeout=10) as connection:
        seen["peer saw"] = connection.recv(100).decode()
except OSError as exc:
    seen["peer saw"] = repr(exc)
pathlib.Path("/opt/ml/model/seen.json").write_text(json.dumps(seen))
"""

ANSWER_PEERS = """
import socket, sys
server = socket.create_server(("0.0.0.0", 0))
print(server.getsockname()[1], flush=True)
while True:
    connection, (peer, _) = server.accept()
    connection.sendall(peer.encode())
    connection.close()
"""


@pytest.fixture
def outside() -> Iterator[Outside]:
    tag = f"{os.getpid() % 0xFFFF:04x}"
    namespace, link = f"omtest{tag}", f"omt{tag}"
    subnet = f"198.18.{os.getpid() % 256}"
    listener = None
    try:
        subprocess.run(["ip", "netns", "add", namespace], check=True)
        commands = [
            f"link add {link} type veth peer name eth0 netns {namespace}",
            f"addr add {subnet}.1/24 dev {link}",
            f"link set {link} up",
            f"-n {namespace} addr add {subnet}.2/24 dev eth0",
            f"-n {namespace} link set eth0 up",
        ]
        for command in commands:
            subprocess.run(["ip", *command.split()], check=True)
        # Replies come back in through it, as through an uplink that forwards.
        Path(f"/proc/sys/net/ipv4/conf/{link}/forwarding").write_text("1")
        listener = subprocess.Popen(
            ["ip", "netns", "exec", namespace, sys.executable, "-c", ANSWER_PEERS],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert listener.stdout is not None
        port = int(listener.stdout.readline())
        yield Outside(f"{subnet}.2", f"{subnet}.1", port)
    finally:
        if listener is not None:
            listener.kill()
            listener.wait()
        subprocess.run(["ip", "link", "del", link], capture_output=True)
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


def reach_outside(jobs: TrainingJobs, tmp_path: Path, name: str, outside: Outside) -> None:
    env = {"OUTSIDE": outside.address, "PORT": str(outside.port)}
    seen = run_job(jobs, tmp_path, name, REACH_OUT, Environment=env)
    assert seen["host"].startswith("10.213."), seen
    assert seen["peer saw"] == outside.machine, seen  # the machine's address, not the host's


def test_a_host_reaches_outside_through_the_masquerade(
    tmp_path: Path, jobs: TrainingJobs, outside: Outside
) -> None:
    reach_outside(jobs, tmp_path, "outward", outside)


def forward_rules() -> str:
    return subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout


@pytest.fixture
def forward_drops() -> Iterator[None]:
    """iptables' FORWARD chain drops by default, as Docker leaves it; restored afterwards."""
    if shutil.which("iptables") is None:
        pytest.fail("iptables is not installed: scripts/install.sh")
    listed = subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True, text=True)
    before = "DROP" if "-P FORWARD DROP" in listed.stdout.splitlines() else "ACCEPT"
    subprocess.run(["iptables", "-P", "FORWARD", "DROP"], check=True)
    try:
        yield
    finally:
        subprocess.run(["iptables", "-P", "FORWARD", before], check=True)


def test_a_host_reaches_outside_where_iptables_forward_drops(
    tmp_path: Path, jobs: TrainingJobs, outside: Outside, forward_drops: None
) -> None:
    name = unique_name("dropping")
    reach_outside(jobs, tmp_path, name, outside)
    bridge = PREFIX + job_id(load_settings().home, name)
    assert bridge not in forward_rules()  # what let its traffic through went with the job


# --- what stays shut -----------------------------------------------------------------------

IPV6 = f"""#!{sys.executable}
import json, os, pathlib, socket, time
def addresses():
    return sorted(line.split()[0] for line in open("/proc/net/if_inet6"))
seen = {{"addresses": addresses(), "reached": []}}
# Were it to turn IPv6 on for its eth0 (it may: see the test), it would still reach nothing.
try:
    pathlib.Path("/proc/sys/net/ipv6/conf/eth0/disable_ipv6").write_text("0")
    deadline = time.monotonic() + 10
    while len(addresses()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
except OSError:
    pass
for address in json.loads(os.environ["TARGETS"]):
    scope = socket.if_nametoindex("eth0") if address.startswith("fe80:") else 0
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.settimeout(2)
            probe.connect((address, int(os.environ["PORT"]), 0, scope))
        seen["reached"].append(address)
    except OSError:
        pass
pathlib.Path("/opt/ml/model/seen.json").write_text(json.dumps(seen))
"""


def machine_ipv6() -> list[str]:
    """Every IPv6 address of the machine's (link-local ones included), but loopback."""
    listed = json.loads(subprocess.run(["ip", "-j", "-6", "addr"], capture_output=True).stdout)
    return [
        info["local"]
        for link in listed
        for info in link.get("addr_info", [])
        if info["local"] != "::1"
    ]


def test_no_ipv6_leads_from_a_host_to_the_machine(tmp_path: Path, jobs: TrainingJobs) -> None:
    with socket.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True) as server:
        targets = machine_ipv6()
        env = {"TARGETS": json.dumps(targets), "PORT": str(server.getsockname()[1])}
        seen = run_job(jobs, tmp_path, "six", IPV6, Environment=env)
    assert seen == {"addresses": ["00000000000000000000000000000001"], "reached": []}


API = f"""#!{sys.executable}
import json, os, pathlib, socket
from urllib.parse import urlparse
seen = {{}}
for name in ("AWS_ENDPOINT_URL_SAGEMAKER", "AWS_ENDPOINT_URL_S3"):
    url = urlparse(os.environ[name])
    try:
        socket.create_connection((url.hostname, url.port), timeout=2).close()
        seen[name] = "reached"
    except OSError:
        seen[name] = "refused"
pathlib.Path("/opt/ml/model/seen.json").write_text(json.dumps(seen))
"""


def test_an_api_port_named_in_the_environment_is_not_carried_in(
    tmp_path: Path, api_server: ApiServer
) -> None:
    sagemaker, s3 = api_server.client("sagemaker"), api_server.client("s3")
    name = unique_name("api")
    s3.create_bucket(Bucket=name)
    program = make_image(tmp_path / "image", API)
    api_url = api_server.env["AWS_ENDPOINT_URL_SAGEMAKER"]
    env = {"AWS_ENDPOINT_URL_SAGEMAKER": api_url, "AWS_ENDPOINT_URL": api_url}
    body = request(name, str(program), f"s3://{name}/out", Environment=env)
    sagemaker.create_training_job(**body)
    try:
        deadline = time.monotonic() + 120
        while (described := sagemaker.describe_training_job(TrainingJobName=name))[
            "TrainingJobStatus"
        ] == "InProgress":
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        with contextlib.suppress(Exception):
            sagemaker.stop_training_job(TrainingJobName=name)
    assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")
    archive = s3.get_object(Bucket=name, Key=f"out/{name}/output/model.tar.gz")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        member = tar.extractfile("seen.json")
        assert member is not None
        seen = json.loads(member.read())
    assert seen == {"AWS_ENDPOINT_URL_SAGEMAKER": "refused", "AWS_ENDPOINT_URL_S3": "reached"}
