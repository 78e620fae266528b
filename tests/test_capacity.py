"""Capacity: the instance-type catalog, the machine's own capacity, the queue, and each host's
share (CPU affinity, a memory cgroup, CUDA_VISIBLE_DEVICES) — real jobs in real sandboxes."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from openmaker.config import load_settings
from openmaker.host.limits import memory_cgroup_root
from openmaker.jobs import capacity
from openmaker.jobs.service import TrainingJobs
from openmaker.spec import ResourceLimitExceeded, ResourceNotFound, shape
from tests.helpers import log_text, make_image, request, run_script, wait_for
from tests.process_helpers import wait_until

GIB = 1024**3

# Reports what the host was given, then ends.
REPORT = """#!/bin/sh
{
  grep Cpus_allowed_list /proc/self/status
  echo "gpus=${CUDA_VISIBLE_DEVICES-unset}"
  cgroup=$(grep -E '^[0-9]+:memory:' /proc/self/cgroup | cut -d: -f3)
  echo "memory=$(cat /sys/fs/cgroup/memory$cgroup/memory.limit_in_bytes)"
} > /opt/ml/model/report.txt
"""

# Says which GPUs it got, then runs until stopped.
RUN_UNTIL_STOPPED = """#!/bin/sh
trap 'exit 0' TERM
echo "gpus=${CUDA_VISIBLE_DEVICES-unset}"
while true; do sleep 0.1; done
"""


def _report(description: dict) -> dict[str, str]:
    import io
    import tarfile

    from tests.helpers import get_object

    data = get_object(description["ModelArtifacts"]["S3ModelArtifacts"])
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        member = tar.extractfile("report.txt")
        assert member is not None
        text = member.read().decode()
    report = {}
    for line in text.splitlines():
        key, _, value = line.replace(":\t", "=").partition("=")
        report[key] = value
    return report


def _fake_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    """No GPU here: an `nvidia-smi` that answers openmaker's query as a machine with `count`."""
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "nvidia-smi"
    lines = "".join(f"{i}\\n" for i in range(count))
    script.write_text(
        '#!/bin/sh\n[ "$1 $2" = "--query-gpu=index --format=csv,noheader" ] || exit 9\n'
        f"printf '{lines}'\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")


def _needs_memory_cgroup() -> None:
    root = memory_cgroup_root()
    if root is None:
        pytest.skip("no memory cgroup controller on this machine")


def test_catalog_holds_real_instance_types_with_their_published_sizes() -> None:
    known = set(shape("TrainingInstanceType").metadata["enum"]) | set(
        shape("ProductionVariantInstanceType").metadata["enum"]
    )
    catalog = capacity.catalog()
    assert len(catalog) > 100
    assert set(catalog) <= known
    for family in ("m5", "m6i", "m7i", "c5", "c6i", "c7i", "r5", "r6i", "t3", "g4dn", "g5",
                   "g6", "p3", "p4d", "p5", "trn1", "inf2"):  # fmt: skip
        assert any(name.startswith(f"ml.{family}.") for name in catalog), family
    assert catalog["ml.m5.xlarge"] == capacity.Resources(4, 16 * GIB, 0)
    assert catalog["ml.c5.large"] == capacity.Resources(2, 4 * GIB, 0)
    assert catalog["ml.g5.12xlarge"] == capacity.Resources(48, 192 * GIB, 4)
    assert catalog["ml.p4d.24xlarge"] == capacity.Resources(96, 1152 * GIB, 8)


def test_machine_capacity_is_detected_and_settings_override_it(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    total = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    machine = capacity.machine(load_settings())
    assert machine.slots == len(os.sched_getaffinity(0))
    assert total - total // 5 < machine.memory < total  # openmaker and the system keep a part
    assert machine.gpu_ids == ()

    _fake_nvidia_smi(tmp_path, monkeypatch, 2)
    assert capacity.machine(load_settings()).gpu_ids == ("0", "1")

    monkeypatch.setenv("OPENMAKER_CPUS", "6")
    monkeypatch.setenv("OPENMAKER_MEMORY_GIB", "12.5")
    monkeypatch.setenv("OPENMAKER_GPUS", "1")
    machine = capacity.machine(load_settings())
    assert (machine.slots, machine.memory, machine.gpu_ids) == (6, int(12.5 * GIB), ("0",))


def test_strict_capacity_refuses_a_job_that_can_never_fit(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENMAKER_CAPACITY", "strict")
    monkeypatch.setenv("OPENMAKER_CPUS", "8")
    monkeypatch.setenv("OPENMAKER_MEMORY_GIB", "30")
    jobs = TrainingJobs()
    body = request("too-big", str(make_image(tmp_path / "image", "#!/bin/sh\n")), "s3://b/out")
    body["ResourceConfig"].update(InstanceType="ml.m5.2xlarge", InstanceCount=2)
    with pytest.raises(ResourceLimitExceeded) as refused:
        jobs.create(body)
    assert refused.value.message == (
        "ResourceConfig: 2 × ml.m5.2xlarge needs 2 × (8 vCPUs, 32 GiB memory and 0 GPUs); this "
        "machine offers 8 vCPUs, 30 GiB memory and 0 GPUs to jobs (OPENMAKER_CAPACITY=strict; "
        "with OPENMAKER_CAPACITY=shared it would run scaled down to this machine)"
    )
    with pytest.raises(ResourceNotFound):
        jobs.describe("too-big")


@pytest.mark.parametrize("policy", ["shared", "strict"])
def test_a_job_with_more_hosts_than_the_quota_is_refused_at_once(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch, policy: str
) -> None:
    # The model has no maximum: a count of 2**31 - 1 once made placement loop per host.
    monkeypatch.setenv("OPENMAKER_CAPACITY", policy)
    jobs = TrainingJobs()
    body = request("too-many", str(make_image(tmp_path / "image", "#!/bin/sh\n")), "s3://b/out")
    body["ResourceConfig"]["InstanceCount"] = 2**31 - 1
    with pytest.raises(ResourceLimitExceeded) as refused:
        jobs.create(body)
    assert "request delta of 2147483647 Instances" in refused.value.message
    assert "ResourceConfig.InstanceCount" in refused.value.message
    with pytest.raises(ResourceNotFound):
        jobs.describe("too-many")


@pytest.mark.parametrize("instance_type", ["ml.m5.24xlarge", "ml.local", "local"])
def test_shared_capacity_runs_any_instance_type_within_the_machine(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch, instance_type: str
) -> None:
    _needs_memory_cgroup()
    monkeypatch.setenv("OPENMAKER_MEMORY_GIB", "3")

    def edit(body: dict) -> None:
        body["ResourceConfig"]["InstanceType"] = instance_type

    _, description = run_script(tmp_path, "scaled", REPORT, edit=edit)
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    assert description["ResourceConfig"]["InstanceType"] == instance_type
    cpus = sorted(os.sched_getaffinity(0))
    report = _report(description)
    assert report == {
        "Cpus_allowed_list": f"{cpus[0]}-{cpus[-1]}" if len(cpus) > 1 else str(cpus[0]),
        "gpus": "",
        "memory": str(3 * GIB),
    }
    training = description["SecondaryStatusTransitions"][2]
    assert f"3 GiB memory, {len(cpus)} CPUs" in training["StatusMessage"]


def test_a_host_gets_its_instance_types_share_of_cpus_and_memory(
    tmp_path: Path, home: Path
) -> None:
    _needs_memory_cgroup()
    cpus = sorted(os.sched_getaffinity(0))

    def edit(body: dict) -> None:
        body["ResourceConfig"]["InstanceType"] = "ml.t3.medium"  # 2 vCPUs, 4 GiB

    _, description = run_script(tmp_path, "share", REPORT, edit=edit)
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    report = _report(description)
    assert report["memory"] == str(4 * GIB)
    allowed = report["Cpus_allowed_list"].replace("-", ",").split(",")
    assert {int(c) for c in allowed} <= set(cpus[:2])


def test_strict_queue_starts_waiting_jobs_in_creation_order_as_capacity_frees(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENMAKER_CAPACITY", "strict")
    monkeypatch.setenv("OPENMAKER_CPUS", "2")
    monkeypatch.setenv("OPENMAKER_MEMORY_GIB", "16")
    monkeypatch.setenv("OPENMAKER_STOP_GRACE_SECONDS", "2")
    looping = make_image(tmp_path / "looping", RUN_UNTIL_STOPPED)
    quick = make_image(tmp_path / "quick", "#!/bin/sh\necho done\n")
    jobs = TrainingJobs()
    # ml.m5.large: 2 vCPUs, 8 GiB — one at a time on 2 CPUs.
    for name, image in (("q-a", looping), ("q-b", looping), ("q-c", quick), ("q-d", quick)):
        jobs.create(request(name, str(image), "s3://b/out"))

    def secondary(name: str) -> str:
        return str(jobs.describe(name)["SecondaryStatus"])

    wait_until(lambda: secondary("q-a") == "Training", "the first job to train")
    for name in ("q-b", "q-c", "q-d"):
        description = jobs.describe(name)
        assert (description["TrainingJobStatus"], description["SecondaryStatus"]) == (
            "InProgress",
            "Pending",
        )
    pending = jobs.describe("q-b")["SecondaryStatusTransitions"][-1]["StatusMessage"]
    assert pending == (
        "Waiting for capacity on this machine: ml.m5.large needs 1 × (2 vCPUs, 8 GiB memory "
        "and 0 GPUs); free now: 0 vCPUs, 8 GiB memory and 0 GPUs"
    )
    behind = jobs.describe("q-c")["SecondaryStatusTransitions"][-1]["StatusMessage"]
    assert behind == "Waiting for capacity behind the training job q-b"

    jobs.stop("q-d")  # a waiting job stops at once: it never ran
    stopped = jobs.describe("q-d")
    assert stopped["TrainingJobStatus"] == "Stopped"
    assert "Training" not in [t["Status"] for t in stopped["SecondaryStatusTransitions"]]

    jobs.stop("q-a")  # its worker ends, and starts the next job in line
    wait_until(lambda: secondary("q-b") == "Training", "the second job to train")
    assert secondary("q-c") == "Pending"
    jobs.stop("q-b")
    assert wait_for(jobs, "q-c")["TrainingJobStatus"] == "Completed"

    a, b, c = (jobs.describe(name) for name in ("q-a", "q-b", "q-c"))
    assert a["TrainingEndTime"] <= b["TrainingStartTime"]
    assert b["TrainingEndTime"] <= c["TrainingStartTime"]
    statuses = [t["Status"] for t in c["SecondaryStatusTransitions"]]
    assert statuses[:3] == ["Starting", "Pending", "Starting"]


def test_gpus_are_given_whole_and_a_job_waits_for_a_free_one(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_nvidia_smi(tmp_path, monkeypatch, 2)
    monkeypatch.setenv("OPENMAKER_STOP_GRACE_SECONDS", "2")
    image = make_image(tmp_path / "image", RUN_UNTIL_STOPPED)
    jobs = TrainingJobs()
    for name in ("gpu-a", "gpu-b", "gpu-c"):
        body = request(name, str(image), "s3://b/out")
        body["ResourceConfig"]["InstanceType"] = "ml.g4dn.xlarge"  # 1 GPU
        jobs.create(body)

    def says(name: str, text: str) -> bool:
        return text in log_text(jobs, name).splitlines()

    wait_until(lambda: says("gpu-a", "gpus=0") and says("gpu-b", "gpus=1"), "two GPU jobs")
    assert jobs.describe("gpu-c")["SecondaryStatus"] == "Pending"
    message = jobs.describe("gpu-c")["SecondaryStatusTransitions"][-1]["StatusMessage"]
    assert "ml.g4dn.xlarge needs 1 × 1 GPUs; free now: 2 vCPUs" in message
    jobs.stop("gpu-a")
    wait_until(lambda: says("gpu-c", "gpus=0"), "the third job to get the freed GPU")
    for name in ("gpu-b", "gpu-c"):
        jobs.stop(name)
    for name in ("gpu-a", "gpu-b", "gpu-c"):
        assert wait_for(jobs, name)["TrainingJobStatus"] == "Stopped"


def test_a_host_over_its_memory_limit_fails_as_the_codes_own_error(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _needs_memory_cgroup()
    monkeypatch.setenv("OPENMAKER_MEMORY_GIB", "0.25")
    script = (
        f"#!{sys.executable}\n"
        "import time\nblocks = []\n"
        "while True:\n    blocks.append(b'x' * (32 << 20))\n    time.sleep(0.01)\n"
    )

    def edit(body: dict) -> None:
        body["RetryStrategy"] = {"MaximumRetryAttempts": 2}

    _, description = run_script(tmp_path, "greedy", script, edit=edit)
    assert description["TrainingJobStatus"] == "Failed"
    assert description["FailureReason"] == (
        "AlgorithmError: the training program of host algo-1 ran out of memory: it was killed "
        "at its limit of 0.25 GiB (ml.m5.large; a larger instance type gives it more)"
    )
    assert "Restarting" not in [t["Status"] for t in description["SecondaryStatusTransitions"]]
    assert json.dumps(description, default=str)  # describable as ever
