"""Endpoints counted by the capacity machinery, against a real `openmaker server` whose machine
is small (OPENMAKER_CAPACITY=strict, 2 CPUs, 8 GiB: one ml.m5.large) and whose log limit is
1 MiB: each instance held to its share (cgroups), what does not fit refused as SageMaker
refuses it, and a container flooding its output bounded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from sqlalchemy import func, select

from openmaker.jobs.db import LogEvent, LogStream, sessions
from openmaker.runtime.limits import cgroup_path
from openmaker.serving.limits import instance_cgroup
from openmaker.settings import load_settings
from tests.apiserver import ApiServer, running_api_server
from tests.test_endpoints import SERVE, Deployer, pytestmark, wait_until

__all__ = ["pytestmark"]  # the skip without a sandbox

# SERVE, answering `limits` with its host name (the instance id), its CPUs and its cgroups; and
# flooding its output with FLOOD set.
LIMITED = SERVE.replace(
    '        if body == b"fail":',
    '        if body == b"limits":\n'
    "            import socket\n"
    "            status = open('/proc/self/status')\n"
    "            cpus = [l for l in status if l.startswith('Cpus_allowed_list')]\n"
    "            text = socket.gethostname() + '\\n' + cpus[0] + open('/proc/self/cgroup').read()\n"
    "            body = text.encode()\n"
    '        if body == b"fail":',
).replace(
    'print("model server up", flush=True)',
    "import threading\n"
    "def flood():\n"
    "    while True:\n"
    "        sys.stdout.write('x' * 200 + '\\n')\n"
    "if os.environ.get('FLOOD'):\n"
    "    threading.Thread(target=flood, daemon=True).start()\n"
    'print("model server up", flush=True)',
)
LOG_LIMIT_MB = 1


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    home = tmp_path_factory.mktemp("small") / "home"
    with running_api_server(
        home,
        OPENMAKER_FILE_ROOTS=str(tmp_path_factory.getbasetemp()),
        OPENMAKER_CAPACITY="strict",
        OPENMAKER_CPUS="2",
        OPENMAKER_MEMORY_GIB="8",
        OPENMAKER_LOG_LIMIT_MB=str(LOG_LIMIT_MB),
    ) as server:
        yield server


@pytest.fixture
def small(small_server: ApiServer, tmp_path: Path) -> Iterator[Deployer]:
    deploy = Deployer(small_server, tmp_path)
    try:
        yield deploy
    finally:
        deploy.delete_all()


def test_instances_get_their_share_and_what_does_not_fit_is_refused(small: Deployer) -> None:
    sagemaker = small.sagemaker
    model = small.model(LIMITED, {"weights.txt": b"w\n"})
    first = small.endpoint(model)
    assert small.wait(first)["EndpointStatus"] == "InService"

    report = small.runtime.invoke_endpoint(EndpointName=first, Body=b"limits")["Body"].read()
    instance, cpus, *cgroups = report.decode().removeprefix("w hello ").splitlines()
    assert cpus.split(":")[1].strip()  # pinned (on this machine, both CPUs are the share)
    key = instance_cgroup(small.server.home, f"endpoint:{first}", instance)
    memory = cgroup_path(key, "memory")
    pids = cgroup_path(key, "pids")
    assert memory is not None and pids is not None
    # The container runs in its instance's cgroups, limited to ml.m5.large's 8 GiB.
    assert any(line.endswith("/" + "/".join(key)) for line in cgroups)
    limit_file = memory / "memory.max"
    if not limit_file.exists():  # cgroup v1
        limit_file = memory / "memory.limit_in_bytes"
    assert int(limit_file.read_text()) == 8 * 1024**3
    assert (pids / "pids.max").read_text().strip() == "4096"

    # More than the machine: refused at once, as over an account's quota.
    with pytest.raises(ClientError) as too_many:
        sagemaker.update_endpoint_weights_and_capacities(
            EndpointName=first,
            DesiredWeightsAndCapacities=[{"VariantName": "AllTraffic", "DesiredInstanceCount": 2}],
        )
    assert too_many.value.response["Error"]["Code"] == "ResourceLimitExceeded"

    # Fits the machine, not now: the endpoint fails for want of capacity.
    second = small.endpoint(model)
    described = small.wait(second)
    assert described["EndpointStatus"] == "Failed"
    assert "InsufficientInstanceCapacity" in described["FailureReason"]
    assert "ml.m5.large" in described["FailureReason"]

    # An update needs its new fleet beside the old: it fails, the old one serves.
    sagemaker.update_endpoint(EndpointName=first, EndpointConfigName=second)
    wait_until(
        lambda: "FailureReason" in sagemaker.describe_endpoint(EndpointName=first),
        "the update to fail",
    )
    described = sagemaker.describe_endpoint(EndpointName=first)
    assert described["EndpointStatus"] == "InService"
    assert "InsufficientInstanceCapacity" in described["FailureReason"]

    # Deleting the first frees its share: the next endpoint gets it.
    sagemaker.delete_endpoint(EndpointName=first)
    wait_until(lambda: small.gone(first), "the first endpoint to go")
    third = small.endpoint(model)
    assert small.wait(third)["EndpointStatus"] == "InService"
    assert not memory.exists()  # the first instance's cgroups went with it


def test_a_container_flooding_its_output_is_bounded_and_serves(small: Deployer) -> None:
    model = small.model(LIMITED, {"weights.txt": b"w\n"}, FLOOD="1")
    name = small.endpoint(model)
    assert small.wait(name)["EndpointStatus"] == "InService"
    settings = load_settings({"OPENMAKER_HOME": str(small.server.home)})
    group = f"/aws/sagemaker/Endpoints/{name}"

    def stored() -> int:
        with sessions(settings)() as session:
            total = session.scalar(
                select(func.sum(func.length(LogEvent.message)))
                .join(LogStream, LogStream.id == LogEvent.stream_id)
                .where(LogStream.group == group)
            )
        return int(total or 0)

    # The flood reaches the limit, and goes no further, while the endpoint answers.
    wait_until(lambda: stored() >= LOG_LIMIT_MB * 1024 * 1024 * 0.9, "the log limit reached")
    for _ in range(20):
        answer = small.runtime.invoke_endpoint(EndpointName=name, Body=b"a")
        assert answer["Body"].read() == b"w hello a"
    assert stored() <= LOG_LIMIT_MB * 1024 * 1024 + 4096
    assert small.sagemaker.describe_endpoint(EndpointName=name)["EndpointStatus"] == "InService"
