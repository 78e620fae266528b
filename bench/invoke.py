"""InvokeEndpoint through openmaker against calling the endpoint's container directly, in the
same run with the same payloads: the latency openmaker adds (p50, p99; one client, the two
paths taken in turn) and the throughput with CLIENTS concurrent clients (each path in turn).

Both paths use the same client, a kept-alive http.client connection per client; the requests
to openmaker are signed (SigV4) before the clock starts, so the figures are the server's own
cost: the HTTP server, the signature check, the route, the proxy's hop to the container and
the metrics. The model server speaks HTTP/1.1 and keeps connections alive, as production
model servers do.

The throughput runs take turns in slices (the load of anything else on the machine falls on
each path alike), count the CPU each process spends per invocation (the clients, the server
and how much of it in the kernel, the container), and measure two more paths beside them: bare
relays that check nothing, one in Python (bench/relay_floor.py) and one in C pumping bytes
(bench/relay_floor.c, built here with `cc`; left out where there is none), what any extra hop
on the same cores leaves of direct's throughput.

Two containers: an echo server (the worst case: the container costs almost nothing, so the
hop's cost is all there is to see) and openmaker's own scikit-learn serving stand-in
(serving/framework/) answering a LogisticRegression over 20 features, as an SKLearnModel is
deployed: CSV of 1 row and of 100 rows in, CSV predictions out.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from bench import cpu
from openmaker.jobs.db import EndpointRecord, sessions
from openmaker.settings import load_settings
from tests.apiserver import ApiServer, running_api_server
from tests.helpers import kill_every_worker, unique_name
from tests.s3server import free_port
from tests.test_endpoints import Deployer, model_archive

CLIENTS = 8
# The throughput runs take turns in this many slices each.
ROUNDS = 8
# The model server: /ping, and /invocations answering its request body.
ECHO = """#!/usr/bin/env python3
import http.server
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # the head and the body are two writes
    def log_message(self, *args):
        pass
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"""
# label: (body, Content-Type, Accept)
Payloads = dict[str, tuple[bytes, str, str]]
ECHO_PAYLOADS: Payloads = {
    "echo 100 B": (b"x" * 100, "text/plain", "*/*"),
    "echo 64 KiB": (b"y" * 65536, "text/plain", "*/*"),
}
SKLEARN_IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"
FEATURES = 20
SKLEARN_ENTRY = b"""import os
import joblib
def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))
"""
TARGETS = "targets: p50 < 1 ms, p99 < 5 ms, ratio >= 0.9"


@dataclass(frozen=True)
class Target:
    """Where one path sends its invocations: host, port, path and the headers to send."""

    host: str
    port: int
    path: str
    headers: dict[str, str]

    def call(self, connection: http.client.HTTPConnection, body: bytes) -> None:
        connection.request("POST", self.path, body=body, headers=self.headers)
        response = connection.getresponse()
        response.read()
        assert response.status == 200, response.status

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=60)


def run(quick: bool, scratch: Path) -> list[str]:
    calls = 300 if quick else 3000
    seconds = 2.0 if quick else 8.0
    print(f"InvokeEndpoint: {calls} calls per path and payload, {CLIENTS} clients", flush=True)
    home = scratch / "invoke-home"
    lines = [f"InvokeEndpoint ({TARGETS})"]
    with running_api_server(home, OPENMAKER_FILE_ROOTS=str(scratch)) as server:
        deployer = Deployer(server, scratch / "invoke-models")
        try:
            echo = deployer.endpoint(deployer.model(ECHO, {"weights.txt": b"w"}))
            model = deployer.endpoint(_sklearn_model(deployer))
            for name, payloads in ((echo, ECHO_PAYLOADS), (model, _sklearn_payloads())):
                described = deployer.wait(name)
                assert described["EndpointStatus"] == "InService", described
                lines += _measure(server, home, name, payloads, calls, seconds)
        finally:
            deployer.delete_all()
            kill_every_worker(home)
    return lines


def _measure(
    server: ApiServer, home: Path, name: str, payloads: Payloads, calls: int, seconds: float
) -> list[str]:
    """Each payload's latency and throughput lines for the endpoint `name`."""
    lines = []
    address, worker = _instance(home, name)
    processes = Processes(server.process.pid, worker)
    python_floor = [sys.executable, "-m", "bench.relay_floor"]
    with contextlib.ExitStack() as floors:
        floor_port, floor_pid = floors.enter_context(_relay_floor(python_floor, address))
        native = _native_floor(home.parent)
        if native is not None:
            native_port, native_pid = floors.enter_context(_relay_floor([str(native)], address))
        for label, (body, content_type, accept) in payloads.items():
            ours, direct = _targets(server, name, address, body, content_type, accept)
            lines += _latency(label, ours, direct, body, calls)
            floor = Target("127.0.0.1", floor_port, "/invocations", direct.headers)
            paths = {
                "direct": (direct, processes),
                "ours": (ours, processes),
                "floor": (floor, Processes(floor_pid, worker)),
            }
            if native is not None:
                relay = Target("127.0.0.1", native_port, "/invocations", direct.headers)
                paths["native floor"] = (relay, Processes(native_pid, worker))
            lines += _throughput(label, paths, body, seconds)
    return lines


def _native_floor(scratch: Path) -> Path | None:
    """bench/relay_floor.c built into `scratch`; None where there is no C compiler."""
    compiler = shutil.which("cc")
    if compiler is None:
        return None
    built = scratch / "relay_floor"
    source = Path(__file__).with_name("relay_floor.c")
    subprocess.run([compiler, "-O2", "-o", str(built), str(source)], check=True)
    return built


def _sklearn_model(deployer: Deployer) -> str:
    """A model as SKLearnModel deploys one: the scikit-learn serving image (openmaker's
    stand-in) and an archive holding a LogisticRegression trained here and the entry point
    loading it."""
    import joblib
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    random = np.random.default_rng(7)
    rows = random.normal(size=(2000, FEATURES))
    labels = rows @ random.normal(size=FEATURES) > 0
    saved = io.BytesIO()
    joblib.dump(LogisticRegression().fit(rows, labels), saved)
    name = unique_name("sklearn")
    bucket = "models"
    with contextlib.suppress(ClientError):
        deployer.s3.create_bucket(Bucket=bucket)
    archive = model_archive({"model.joblib": saved.getvalue(), "code/inference.py": SKLEARN_ENTRY})
    deployer.s3.put_object(Bucket=bucket, Key=f"{name}/model.tar.gz", Body=archive)
    deployer.sagemaker.create_model(
        ModelName=name,
        PrimaryContainer={
            "Image": SKLEARN_IMAGE,
            "ModelDataUrl": f"s3://{bucket}/{name}/model.tar.gz",
            "Environment": {
                "SAGEMAKER_PROGRAM": "inference.py",
                "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
            },
        },
        ExecutionRoleArn="arn:aws:iam::000000000000:role/openmaker",
    )
    return name


def _sklearn_payloads() -> Payloads:
    import numpy as np

    random = np.random.default_rng(8)

    def csv(count: int) -> bytes:
        rows = random.normal(size=(count, FEATURES))
        return "".join(",".join(f"{v:.6f}" for v in row) + "\n" for row in rows).encode()

    return {
        f"scikit-learn {count} row{'s' if count > 1 else ''}": (csv(count), "text/csv", "text/csv")
        for count in (1, 100)
    }


@contextlib.contextmanager
def _relay_floor(command: list[str], address: str) -> Iterator[tuple[int, int]]:
    """A bare relay (`command PORT HOST PORT`) to the container at `address`: its port and
    PID."""
    host, _, port = address.rpartition(":")
    listen = free_port()
    relay = subprocess.Popen([*command, str(listen), host, port], cwd=Path(__file__).parent.parent)
    try:
        _sleep_until(lambda: _listening(listen) or relay.poll() is not None)
        assert relay.poll() is None, "the relay floor did not start"
        yield listen, relay.pid
    finally:
        relay.kill()
        relay.wait()


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _instance(home: Path, name: str) -> tuple[str, int]:
    """The endpoint's instance's address and its worker's PID (the container runs under it)."""
    with sessions(load_settings({"OPENMAKER_HOME": str(home)}))() as session:
        row = session.get(EndpointRecord, name)
        assert row is not None and row.instances and row.worker
        return str(row.instances[0]["address"]), int(row.worker.split(":")[1])


@dataclass(frozen=True)
class Processes:
    """Whose CPU a throughput run counts: this process (the clients), the server, the
    container (every process under the endpoint's worker)."""

    server: int
    worker: int

    def cpu(self) -> tuple[float, float, float, float]:
        """CPU seconds so far: the clients', the server's, the server's in the kernel, the
        container's."""
        user, system = cpu.split(self.server)
        return (
            time.process_time(),
            user + system,
            system,
            cpu.total(cpu.descendants(self.worker)),
        )


def _targets(
    server: ApiServer, name: str, address: str, body: bytes, content_type: str, accept: str
) -> tuple[Target, Target]:
    """openmaker's runtime API (the request signed once: SigV4 holds for 15 minutes) and the
    container itself."""
    url = f"{server.env['AWS_ENDPOINT_URL_SAGEMAKER']}/endpoints/{name}/invocations"
    sent = {"Content-Type": content_type, "Accept": accept}
    request = AWSRequest("POST", url, data=body, headers=sent)
    keys = Credentials(server.env["AWS_ACCESS_KEY_ID"], server.env["AWS_SECRET_ACCESS_KEY"])
    SigV4Auth(keys, "sagemaker", server.env["AWS_REGION"]).add_auth(request)
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    signed = {k: str(v) for k, v in request.headers.items()}
    ours = Target(parts.hostname, parts.port, parts.path, signed)
    host, _, port = address.rpartition(":")
    direct = Target(host, int(port), "/invocations", sent)
    # The same request through boto3 works too: the signed one is what a client sends.
    runtime = boto3.client(
        "sagemaker-runtime",
        region_name=server.env["AWS_REGION"],
        aws_access_key_id=server.env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=server.env["AWS_SECRET_ACCESS_KEY"],
        endpoint_url=server.env["AWS_ENDPOINT_URL_SAGEMAKER"],
    )
    answer = runtime.invoke_endpoint(
        EndpointName=name, Body=body, ContentType=content_type, Accept=accept
    )["Body"].read()
    connection = direct.connect()
    direct.call(connection, body)  # the container answers the same, directly
    connection.close()
    assert answer == body or content_type == "text/csv", answer[:100]
    return ours, direct


def _latency(label: str, ours: Target, direct: Target, body: bytes, calls: int) -> list[str]:
    """One client; the two paths in turn, call by call, so that load hits both alike."""
    times: dict[str, list[float]] = {"ours": [], "direct": []}
    connections = {"ours": ours.connect(), "direct": direct.connect()}
    targets = {"ours": ours, "direct": direct}
    for _ in range(min(calls // 10, 100)):  # warm both paths up
        for key in targets:
            targets[key].call(connections[key], body)
    for _ in range(calls):
        for key in targets:
            started = time.perf_counter()
            targets[key].call(connections[key], body)
            times[key].append(time.perf_counter() - started)
    p50 = {k: _percentile(v, 50) for k, v in times.items()}
    p99 = {k: _percentile(v, 99) for k, v in times.items()}
    added50, added99 = (p50["ours"] - p50["direct"]) * 1000, (p99["ours"] - p99["direct"]) * 1000
    return [
        f"InvokeEndpoint {label}: openmaker adds {added50:.2f} ms at p50 (target < 1: "
        f"{_meets(added50 < 1)}), {added99:.2f} ms at p99 (target < 5: {_meets(added99 < 5)})",
        f"  through openmaker p50 {p50['ours'] * 1000:.2f} ms, p99 {p99['ours'] * 1000:.2f} ms; "
        f"direct p50 {p50['direct'] * 1000:.2f} ms, p99 {p99['direct'] * 1000:.2f} ms "
        f"(n={calls} each)",
    ]


def _throughput(
    label: str,
    paths: dict[str, tuple[Target, Processes]],
    body: bytes,
    seconds: float,
) -> list[str]:
    """The rates of openmaker, direct and the bare relay, and the CPU each process spent per
    invocation on each (µs). The paths take turns in ROUNDS slices, so that the load of
    anything else on the machine falls on them alike."""
    rates = _rates(paths, body, seconds)
    (ours, ours_cpu), (direct, direct_cpu) = rates["ours"], rates["direct"]
    floor, floor_cpu = rates["floor"]
    lines = [
        f"InvokeEndpoint {label}, {CLIENTS} clients: openmaker {ours:.0f}/s, direct "
        f"{direct:.0f}/s; ratio {ours / direct:.2f} (target >= 0.9: "
        f"{_meets(ours / direct >= 0.9)})",
        f"  CPU per invocation (µs), clients / server (of it in the kernel) / container: "
        f"through openmaker {_cpu(ours_cpu)}; direct {_cpu(direct_cpu)}",
        f"  a bare Python relay (no checks, bench/relay_floor.py): {floor:.0f}/s, ratio "
        f"{floor / direct:.2f}; CPU per invocation (µs) {_cpu(floor_cpu)}",
    ]
    if "native floor" in rates:
        native, native_cpu = rates["native floor"]
        lines.append(
            f"  a bare C relay (bytes pumped, bench/relay_floor.c): {native:.0f}/s, ratio "
            f"{native / direct:.2f}; CPU per invocation (µs) {_cpu(native_cpu)}"
        )
    return lines


def _rates(
    paths: dict[str, tuple[Target, Processes]], body: bytes, seconds: float
) -> dict[str, tuple[float, tuple[float, ...]]]:
    """Each path's invocations per second and each process's CPU per invocation (µs), over
    ROUNDS turns of `seconds / ROUNDS` each."""
    calls = dict.fromkeys(paths, 0)
    elapsed = dict.fromkeys(paths, 0.0)
    spent = {key: [0.0] * 4 for key in paths}
    for _ in range(ROUNDS):
        for key, (target, processes) in paths.items():
            done, took, cpu_spent = _slice(target, body, seconds / ROUNDS, processes)
            calls[key] += done
            elapsed[key] += took
            spent[key] = [a + b for a, b in zip(spent[key], cpu_spent, strict=True)]
    return {
        key: (
            calls[key] / elapsed[key],
            tuple(c * 1e6 / max(calls[key], 1) for c in spent[key]),
        )
        for key in paths
    }


def _meets(met: bool) -> str:
    return "met" if met else "NOT met"


def _cpu(spent: tuple[float, ...]) -> str:
    client, server, kernel, container = spent
    return f"{client:.0f} / {server:.0f} ({kernel:.0f}) / {container:.0f}"


def _slice(
    target: Target, body: bytes, seconds: float, processes: Processes
) -> tuple[int, float, tuple[float, ...]]:
    """Invocations that CLIENTS threads complete in `seconds`, each on its own connection; the
    time taken; each process's CPU seconds meanwhile."""
    done = [0] * CLIENTS
    stop = threading.Event()

    def client(index: int) -> None:
        connection = target.connect()
        while not stop.is_set():
            target.call(connection, body)
            done[index] += 1
        connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    before = processes.cpu()
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    _sleep_until(lambda: time.perf_counter() - started >= seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    after = processes.cpu()
    return sum(done), elapsed, tuple(a - b for a, b in zip(after, before, strict=True))


def _sleep_until(done: Callable[[], bool]) -> None:
    while not done():
        time.sleep(0.05)


def _percentile(values: list[float], share: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(share) - 1]
