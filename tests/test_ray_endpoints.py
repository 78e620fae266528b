"""Endpoints' instances on a Ray cluster (OPENMAKER_EXECUTOR=ray): the same multi-node cluster
on this machine as tests/test_ray.py (its fixture, started once for this module), a real
`openmaker server` on it, boto3. The worker nodes each stand for one ml.m5.large; the head
for none, so an instance of that type runs on a worker node, reached through its forwarder."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from openmaker.api.console.cluster_view import ClusterView
from openmaker.runtime.network import remove as remove_network
from openmaker.serving.forwarder import SECRET_BYTES, Forwarder, Presenter, new_secret
from openmaker.serving.instance import instance_folder
from openmaker.settings import load_settings
from openmaker.training.cluster_nodes import instance_label
from openmaker.training.ray_hosts import node_agent
from tests.apiserver import ApiServer, running_api_server
from tests.process_helpers import kill
from tests.test_endpoint_faults import DIES
from tests.test_endpoint_metrics import cloudwatch
from tests.test_endpoints import SERVE, Deployer, wait_until
from tests.test_endpoints_mme import invoke, mme_endpoint
from tests.test_endpoints_pipeline import pipeline_model
from tests.test_ray import (  # noqa: F401 - the cluster fixture
    NODE,
    NODE_ADDRESSES,
    TYPE,
    WORKER_RESOURCES,
    actor_gone,
    cluster,
)
from tests.test_transform import Transforms, lines, sums

ray = pytest.importorskip("ray")


def _environ_has(marker: bytes) -> list[int]:
    """The processes whose environment holds `marker` (a container's model Environment)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
    return found


def _held() -> dict[str, list[dict[str, str]]]:
    """The instances each node's serving agent holds, by node id."""
    from openmaker.serving.ray_agent import AGENT_PREFIX
    from openmaker.training.host.ray_actor import NAMESPACE

    held: dict[str, list[dict[str, str]]] = {}
    for name in ray.util.list_named_actors():
        if name.startswith(AGENT_PREFIX):
            agent = ray.get_actor(name, namespace=NAMESPACE)
            node = name.removeprefix(AGENT_PREFIX).split(":")[0]
            with contextlib.suppress(ray.exceptions.RayError):
                held.setdefault(node, []).extend(ray.get(agent.instances.remote(), timeout=30))
    return held


def _answer(address: tuple[str, int], sent: bytes) -> bytes:
    """All a connection to `address` gets back after sending `sent`."""
    with socket.create_connection(address, timeout=10) as connection:
        received = b""
        # A refusing forwarder closes with what was sent unread: the connection is reset,
        # at any of these steps (ENOTCONN, ECONNRESET, EPIPE).
        with contextlib.suppress(ConnectionError, OSError):
            connection.sendall(sent)
            connection.shutdown(socket.SHUT_WR)  # all it says: the forwarder need not wait
            while part := connection.recv(65536):
                received += part
        return received


@pytest.fixture(scope="module")
def ray_server(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:  # noqa: F811
    home = tmp_path_factory.mktemp("ray-endpoints") / "home"
    env = {
        "OPENMAKER_EXECUTOR": "ray",
        "RAY_ADDRESS": cluster.address,
        # A fleet the cluster cannot hold is refused after this.
        "OPENMAKER_RAY_WAIT_SECONDS": "4",
    }
    with running_api_server(home, **env) as server:
        ray.init(address=cluster.address, namespace="openmaker", log_to_driver=False)
        try:
            yield server
        finally:
            ray.shutdown()
    for pid in _environ_has(b"OPENMAKER_HOME=" + str(home).encode()):
        with contextlib.suppress(ProcessLookupError):
            kill(pid)


@pytest.fixture
def deployer(ray_server: ApiServer, tmp_path: Path) -> Iterator[Deployer]:
    # The models' images under the server's file roots (the folder holding its home).
    images = ray_server.home.parent / tmp_path.name
    deploy = Deployer(ray_server, images)
    try:
        yield deploy
    finally:
        deploy.delete_all()


def test_an_instance_on_a_worker_node_serves_through_its_forwarder_alone(
    deployer: Deployer,
    cluster: Any,  # noqa: F811
) -> None:
    marker = f"MARK={deployer.tmp_path.name}"
    model = deployer.model(DIES, {"weights.txt": b"w7\n"}, MARK=deployer.tmp_path.name)
    name = deployer.endpoint(model)
    described = deployer.wait(name)
    assert described["EndpointStatus"] == "InService", described.get("FailureReason")

    # It runs on a worker node, where its node's agent holds it and exposes it.
    workers = {n["NodeID"] for n in ray.nodes() if n["NodeManagerAddress"] in NODE_ADDRESSES}
    where = {node: held for node, held in _held().items() if held}
    ((node, [held]),) = where.items()
    assert node in workers
    assert held["instance"].startswith(f"{name}/i-")
    host, _, port = held["forwarder"].rpartition(":")
    assert host in NODE_ADDRESSES
    forwarder = (host, int(port))

    answer = deployer.runtime.invoke_endpoint(EndpointName=name, Body=b"data")
    assert answer["Body"].read() == b"w7 hello data"
    streamed = deployer.runtime.invoke_endpoint_with_response_stream(EndpointName=name, Body=b"s")
    parts = b"".join(event["PayloadPart"]["Bytes"] for event in streamed["Body"])
    assert parts == b"w7 hello s"

    # Its output is in the endpoint's log group, stream <variant>/<instance>.
    logs = deployer.server.client("logs")
    group, stream = (
        f"/aws/sagemaker/Endpoints/{name}",
        f"AllTraffic/{held['instance'].split('/')[1]}",
    )

    wait_until(lambda: _said(logs, group, stream, "model server up"), "its line in its stream")
    # Its utilization, measured on its node by its agent (its CPU time: an instance on a node
    # has no memory limit there, so no memory cgroup to read).
    metrics = cloudwatch(deployer.server)
    dimensions = [{"Name": "EndpointName", "Value": name}]

    def measured() -> list[str]:
        listed = metrics.list_metrics(Namespace="/aws/sagemaker/Endpoints", Dimensions=dimensions)
        return sorted(m["MetricName"] for m in listed["Metrics"])

    wait_until(lambda: "CPUUtilization" in measured(), "its utilization sampled")

    # A client without the secret, or with a wrong one of the right length, gets nothing.
    ping = b"GET /ping HTTP/1.0\r\n\r\n"
    assert _answer(forwarder, ping) == b""
    assert _answer(forwarder, ping.ljust(SECRET_BYTES) + ping) == b""
    assert _answer(forwarder, new_secret() + ping) == b""

    # Its container dies on its node: started again there, and serving.
    assert _environ_has(marker.encode())  # its container runs
    with pytest.raises(ClientError):
        deployer.runtime.invoke_endpoint(EndpointName=name, Body=b"die")
    wait_until(lambda: _said(logs, group, stream, "exited with status 7"), "the restart noted")
    wait_until(lambda: _invoked(deployer, name) == b"w7 hello data", "the new container to serve")
    assert [h["forwarder"] for h in _held()[node]] == [held["forwarder"]]

    # Deleted: no container, forwarder, instance in an agent or placement group is left.
    deployer.sagemaker.delete_endpoint(EndpointName=name)
    wait_until(lambda: deployer.gone(name), "the endpoint to go")
    assert not _environ_has(marker.encode())
    assert not any(held for held in _held().values())
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(forwarder, timeout=10).close()
    groups = ray.util.placement_group_table().values()
    assert all(g["state"] == "REMOVED" for g in groups), groups
    links = [p for p in Path("/sys/class/net").glob("omn*") if name in _alias(p)]
    assert links == []


def _said(logs: Any, group: str, stream: str, text: str) -> bool:
    with contextlib.suppress(ClientError):
        events = logs.get_log_events(logGroupName=group, logStreamName=stream)["events"]
        return any(text in e["message"] for e in events)
    return False


def _invoked(deployer: Deployer, name: str) -> bytes | None:
    try:
        body: bytes = deployer.runtime.invoke_endpoint(EndpointName=name, Body=b"data")[
            "Body"
        ].read()
    except ClientError:
        return None
    return body


def _alias(link: Path) -> str:
    try:
        return (link / "ifalias").read_text()
    except OSError:
        return ""


def test_a_fleet_the_cluster_cannot_hold_fails_the_endpoint_saying_why(
    deployer: Deployer,
) -> None:
    """Three ml.m5.large on two nodes that stand for one each: refused after the wait."""
    model = deployer.model(SERVE, {"weights.txt": b"w\n"})
    name = deployer.endpoint(model, count=3)
    described = deployer.wait(name)
    assert described["EndpointStatus"] == "Failed"
    reason = described["FailureReason"]
    assert f"3 x {TYPE} for ProductionVariant AllTraffic" in reason, reason
    assert "Ray cluster" in reason and "OPENMAKER_RAY_WAIT_SECONDS" in reason, reason
    assert ray.util.placement_group_table() and all(
        g["state"] == "REMOVED" for g in ray.util.placement_group_table().values()
    )


def test_instances_added_to_an_endpoint_are_placed_on_a_node_of_their_own(
    deployer: Deployer,
) -> None:
    """UpdateEndpointWeightsAndCapacities to two instances: the new one on the other worker
    node, both serving; back to one, the other goes with its placement group."""
    model = deployer.model(SERVE, {"weights.txt": b"w9\n"})
    name = deployer.endpoint(model)
    assert deployer.wait(name)["EndpointStatus"] == "InService"
    deployer.sagemaker.update_endpoint_weights_and_capacities(
        EndpointName=name,
        DesiredWeightsAndCapacities=[{"VariantName": "AllTraffic", "DesiredInstanceCount": 2}],
    )
    wait_until(lambda: deployer.wait(name)["EndpointStatus"] == "InService", "the update")
    described = deployer.wait(name)
    assert described["ProductionVariants"][0]["CurrentInstanceCount"] == 2, described.get(
        "FailureReason"
    )
    placed = {node: held for node, held in _held().items() if held}
    assert [len(held) for held in placed.values()] == [1, 1]
    assert all(_invoked(deployer, name) == b"w9 hello data" for _ in range(4))
    assert _live_groups() == 2

    deployer.sagemaker.update_endpoint_weights_and_capacities(
        EndpointName=name,
        DesiredWeightsAndCapacities=[{"VariantName": "AllTraffic", "DesiredInstanceCount": 1}],
    )
    wait_until(lambda: sum(len(h) for h in _held().values()) == 1, "one instance left")
    wait_until(lambda: _live_groups() == 1, "its placement group removed")
    assert _invoked(deployer, name) == b"w9 hello data"


def test_the_instances_of_a_killed_worker_are_closed_by_their_agents(
    deployer: Deployer,
) -> None:
    """The endpoint's worker killed (-9): its instance's agent sees its Ray job end and stops
    the container, the forwarder and the bridge, as a local worker's end would."""
    model = deployer.model(SERVE, {"weights.txt": b"w\n"}, MARK=deployer.tmp_path.name)
    name = deployer.endpoint(model)
    assert deployer.wait(name)["EndpointStatus"] == "InService"
    ((held,),) = (h for h in _held().values() if h)
    host, _, port = held["forwarder"].rpartition(":")
    # The worker's key to the model data names it (jobs/gate_keys.py).
    keys = deployer.server.home / "gate" / "keys"
    records = [json.loads(p.read_text()) for p in keys.glob("*.json")]
    (worker,) = [r["worker"][0] for r in records if r["job"] == f"instances/endpoint:{name}"]
    kill(worker)

    def closed() -> bool:
        placed = [h["instance"] for held in _held().values() for h in held]
        return held["instance"] not in placed

    wait_until(closed, "its agent to close the instance", 60)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=10).close()


def test_a_transform_jobs_instances_run_on_the_cluster(
    ray_server: ApiServer, tmp_path: Path
) -> None:
    transforms = Transforms(ray_server, ray_server.home.parent / tmp_path.name)
    try:
        model = transforms.model()
        prefix = transforms.inputs({"a.csv": lines(5), "b.csv": lines(3, 1)})
        name = transforms.create(model, prefix, count=2)
        described = transforms.wait(name)
        assert described["TransformJobStatus"] == "Completed", described.get("FailureReason")
        assert transforms.output(name, "a.csv.out") == sums(5)
        assert transforms.output(name, "b.csv.out") == sums(3, 1)
        logs = ray_server.client("logs")
        events = logs.filter_log_events(
            logGroupName="/aws/sagemaker/TransformJobs", logStreamNamePrefix=f"{name}/"
        )["events"]
        placed = {
            e["message"].split(" runs on node ")[1].split()[0]
            for e in events
            if " runs on node " in e["message"]
        }
        assert placed == set(NODE_ADDRESSES), [e["message"] for e in events]  # one per node
        assert _live_groups() == 0
    finally:
        transforms.stop_all()


def _live_groups() -> int:
    return sum(g["state"] != "REMOVED" for g in ray.util.placement_group_table().values())


class _Says(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        said = self.server.said  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(said)))
        self.end_headers()
        self.wfile.write(said)

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _serving(said: bytes) -> Iterator[tuple[str, int]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Says)
    server.said = said  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield ("127.0.0.1", server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_a_forwarder_takes_its_own_instances_secret_alone() -> None:
    """Two instances' forwarders on one node: each answers its own secret's presenter; one
    instance's secret gets nothing from the other's container."""
    first, second = new_secret(), new_secret()
    with _serving(b"first") as one, _serving(b"second") as two:
        forwarders = [Forwarder("127.0.0.1", one, first), Forwarder("127.0.0.1", two, second)]
        presenter = Presenter(forwarders[0].address, first)
        try:
            ping = b"GET /ping HTTP/1.0\r\n\r\n"
            assert _answer(presenter.address, ping).endswith(b"first")
            assert _answer(forwarders[0].address, first + ping).endswith(b"first")
            assert _answer(forwarders[1].address, first + ping) == b""
            assert _answer(forwarders[1].address, second + ping).endswith(b"second")
            assert _answer(forwarders[1].address, ping) == b""
        finally:
            presenter.close()
            for forwarder in forwarders:
                forwarder.close()


def _cluster_shown(cluster: Any) -> str:  # noqa: F811
    """What `openmaker cluster` prints, as a user runs it beside the server."""
    shown = subprocess.run(
        [sys.executable, "-m", "openmaker.cli.app", "cluster"],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ | {"RAY_ADDRESS": cluster.address, "COLUMNS": "400"},
    )
    assert shown.returncode == 0, shown.stderr
    return shown.stdout


def test_openmaker_cluster_lists_an_endpoints_instance_on_its_node(
    deployer: Deployer,
    cluster: Any,  # noqa: F811
) -> None:
    """`openmaker cluster` and the console's cluster page name the instance, with what it holds,
    on the node it runs on; once the endpoint is deleted, nowhere."""
    model = deployer.model(SERVE, {"weights.txt": b"w\n"})
    name = deployer.endpoint(model)
    described = deployer.wait(name)
    assert described["EndpointStatus"] == "InService", described.get("FailureReason")
    ((node, [held]),) = ((n, h) for n, h in _held().items() if h)
    address = next(n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node)
    shown = f"endpoint {name}/AllTraffic/{held['id']} (1 × {TYPE})"

    (line,) = [line for line in _cluster_shown(cluster).splitlines() if name in line]
    assert line.split()[1] == address and shown in line, line
    page = ClusterView(dataclasses.replace(load_settings(), executor="ray")).read()
    listed = {n["address"]: [i["id"] for i in n["instances"]] for n in page["nodes"]}
    assert listed[address] == [held["id"]]
    assert sum(len(ids) for ids in listed.values()) == 1

    deployer.sagemaker.delete_endpoint(EndpointName=name)
    wait_until(lambda: deployer.gone(name), "the endpoint to go")
    assert name not in _cluster_shown(cluster)


def test_serving_agents_of_other_code_are_retired(deployer: Deployer) -> None:
    """A server whose code is not the serving agents' (an upgrade) has its instances run in
    agents of its own code, which end their node's earlier agents once these hold nothing."""
    from openmaker.serving.ray_agent import AGENT_PREFIX, agent_name
    from openmaker.training.host.ray_actor import NAMESPACE

    class EarlierAgent:
        """A serving agent of other code as this code sees it: it holds no instance."""

        def instances(self) -> list[dict[str, str]]:
            return []

    workers = [
        n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeManagerAddress"] in NODE_ADDRESSES
    ]
    # This code's agents, idle after the earlier tests, end: the endpoint makes one anew.
    for node in workers:
        with contextlib.suppress(ValueError):
            ray.kill(ray.get_actor(agent_name(node), namespace=NAMESPACE))
        wait_until(functools.partial(actor_gone, agent_name(node)), "this code's agent to end")
    earlier = {node: f"{AGENT_PREFIX}{node}:0123456789ab" for node in workers}
    try:
        for node, old in earlier.items():
            assert ray.get(node_agent(EarlierAgent, old, node).instances.remote()) == []
        model = deployer.model(SERVE, {"weights.txt": b"w\n"})
        name = deployer.endpoint(model)
        assert deployer.wait(name)["EndpointStatus"] == "InService"
        ((node, _),) = ((n, h) for n, h in _held().items() if h)
        wait_until(functools.partial(actor_gone, earlier[node]), "the earlier agent to be retired")
        (other,) = set(workers) - {node}
        assert not actor_gone(earlier[other])  # no agent of this code there to retire it
        assert _invoked(deployer, name) == b"w hello data"
    finally:
        for old in earlier.values():
            with contextlib.suppress(ValueError):
                ray.kill(ray.get_actor(old, namespace=NAMESPACE))


def test_an_inference_pipeline_runs_on_a_worker_node(deployer: Deployer) -> None:
    """A Serial pipeline of two containers on a worker node: the proxy reaches each container
    through a presenter/forwarder pair of its own, each answer passed on as locally."""
    name = deployer.endpoint(pipeline_model(deployer, "Serial", hostnames=True))
    described = deployer.wait(name)
    assert described["EndpointStatus"] == "InService", described.get("FailureReason")
    workers = {n["NodeID"] for n in ray.nodes() if n["NodeManagerAddress"] in NODE_ADDRESSES}
    ((node, [held]),) = ((n, h) for n, h in _held().items() if h)
    assert node in workers

    answer = deployer.runtime.invoke_endpoint(EndpointName=name, Body=b"x", ContentType="text/csv")
    assert answer["Body"].read() == b"second[application/x-first](first[text/csv](x))"
    logs = deployer.server.client("logs")
    group = f"/aws/sagemaker/Endpoints/{name}"
    for hostname, said in (("prep", "first up"), ("predict", "second up")):
        stream = f"AllTraffic/{held['id']}/{hostname}"
        wait_until(functools.partial(_said, logs, group, stream, said), said)


def test_a_multi_model_endpoint_runs_on_a_worker_node(deployer: Deployer) -> None:
    """Its node's agent fetches each TargetModel into the instance's folder on that node (the
    nodes share this machine's home here), the proxy loads and invokes it through the
    presenter/forwarder pair: each model answers with its own weights."""
    endpoint = mme_endpoint(deployer, capacity=5)
    workers = {n["NodeID"] for n in ray.nodes() if n["NodeManagerAddress"] in NODE_ADDRESSES}
    ((node, [held]),) = ((n, h) for n, h in _held().items() if h)
    assert node in workers

    assert invoke(deployer, endpoint, "model-a.tar.gz", b"1").startswith("wa asked=1 ")
    assert invoke(deployer, endpoint, "model-b.tar.gz", b"2").startswith("wb asked=1 ")
    assert invoke(deployer, endpoint, "model-a.tar.gz", b"3").startswith("wa asked=1 ")
    folder = instance_folder(load_settings({"OPENMAKER_HOME": str(deployer.server.home)}),
                             endpoint, held["id"])  # fmt: skip
    weights = sorted(p.read_text() for p in (folder / "models").glob("m-*/model/weights.txt"))
    assert weights == ["wa", "wb"]


def test_openmaker_cluster_says_whose_each_instance_is() -> None:
    endpoint = {"kind": "endpoint", "name": "e", "variant": "v", "id": "i-1", "holds": "(1 CPU)"}
    assert instance_label(endpoint) == "endpoint e/v/i-1 (1 CPU)"
    transform = endpoint | {"kind": "transform job", "name": "t", "variant": "t"}
    assert instance_label(transform) == "transform job t/i-1 (1 CPU)"


def test_an_instance_lost_with_its_node_is_started_on_another(
    deployer: Deployer,
    cluster: Any,  # noqa: F811
) -> None:
    """Its raylet killed as in a crash: the instance goes out of the route and a new one
    serves from the other worker node. (Last in the module: the node comes back after.)"""
    marker = f"MARK={deployer.tmp_path.name}"
    model = deployer.model(SERVE, {"weights.txt": b"w8\n"}, MARK=deployer.tmp_path.name)
    name = deployer.endpoint(model)
    described = deployer.wait(name)
    assert described["EndpointStatus"] == "InService", described.get("FailureReason")
    ((node, [held]),) = ((n, h) for n, h in _held().items() if h)
    address = next(n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node)
    first = held["instance"]
    orphans = _environ_has(marker.encode())
    victim = next(n for n in cluster.worker_nodes if n.node_ip_address == address)
    try:
        cluster.remove_node(victim, allow_graceful=False)
        for pid in orphans:  # what the node's machine took with it, were it another
            with contextlib.suppress(ProcessLookupError):
                kill(pid)

        def elsewhere() -> bool:
            placed = [h["instance"] for held in _held().values() for h in held]
            return bool(placed) and first not in placed

        wait_until(elsewhere, "a new instance on the other node", 60)
        wait_until(lambda: _invoked(deployer, name) == b"w8 hello data", "it to serve", 60)
        logs = deployer.server.client("logs")
        stream = f"AllTraffic/{first.split('/')[1]}"
        events = logs.get_log_events(
            logGroupName=f"/aws/sagemaker/Endpoints/{name}", logStreamName=stream
        )["events"]
        assert any(f"lost with its node {address}" in e["message"] for e in events)
        (variant,) = deployer.sagemaker.describe_endpoint(EndpointName=name)["ProductionVariants"]
        assert variant["CurrentInstanceCount"] == 1
    finally:
        deployer.delete_all()
        cluster.add_node(node_ip_address=address, resources=WORKER_RESOURCES, **NODE)
        for link in Path("/sys/class/net").glob("omn*"):  # the lost node's bridge
            if name in (alias := _alias(link).strip()):
                # With its rules: "openmaker:<home key>:<the network's key>".
                remove_network(deployer.server.home, alias.split(":", 2)[2])
