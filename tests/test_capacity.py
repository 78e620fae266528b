"""Capacity: the instance-type catalog, the machine's own capacity, the queue, and each host's
share (CPU affinity, memory and pids cgroups, its GPUs) — real jobs in real sandboxes.

Expectations come from what this machine has (its CPU affinity, /proc/meminfo, what
`nvidia-smi` lists), read here on their own: the tests pass on any number of cores, with or
without GPUs (CI runs them again under `taskset -c 0` and with tests/fake_gpu on PATH), on
cgroup v1 and v2 (the cgroup tests run again where only a cgroup2 hierarchy is mounted)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from openmaker import instances
from openmaker.jobs import capacity
from openmaker.settings import load_settings
from openmaker.shapes.errors import ResourceLimitExceeded, ResourceNotFound
from openmaker.shapes.model import shape
from openmaker.training.host.limits import cgroup_root
from openmaker.training.service import TrainingJobs
from tests.helpers import log_text, make_image, request, run_script, wait_for
from tests.process_helpers import wait_until

GIB = 1024**3

FAKE_GPU = Path(__file__).parent / "fake_gpu"
# Set for the run of these tests inside a mount namespace with only a cgroup2 hierarchy.
EXPECT_CGROUP_V2 = "OPENMAKER_TEST_EXPECT_CGROUP_V2"

# Reports what the host was given, then ends. Its memory limit: cgroup v1, else v2.
REPORT = """#!/bin/sh
{
  grep Cpus_allowed_list /proc/self/status
  echo "gpus=${CUDA_VISIBLE_DEVICES-unset}"
  echo "nvidia=${NVIDIA_VISIBLE_DEVICES-unset}"
  cgroup=$(grep -E '^[0-9]+:memory:' /proc/self/cgroup | cut -d: -f3)
  if [ -n "$cgroup" ]; then
    echo "memory=$(cat /sys/fs/cgroup/memory$cgroup/memory.limit_in_bytes)"
  else
    cgroup=$(grep '^0::' /proc/self/cgroup | cut -d: -f3)
    echo "memory=$(cat /sys/fs/cgroup$cgroup/memory.max)"
  fi
} > /opt/ml/model/report.txt
"""

# Says which GPUs it got, then runs until stopped.
RUN_UNTIL_STOPPED = """#!/bin/sh
trap 'exit 0' TERM
echo "gpus=${CUDA_VISIBLE_DEVICES-unset} nvidia=${NVIDIA_VISIBLE_DEVICES-unset}"
while true; do sleep 0.1; done
"""

# Forks children that wait, until it has 64 or a fork fails; says how many, then ends.
FORKS = f"""#!{sys.executable}
import os, signal
children = []
try:
    while len(children) < 64:
        pid = os.fork()
        if pid == 0:
            signal.pause()
            os._exit(0)
        children.append(pid)
except OSError as exc:
    print("fork failed:", exc.strerror, flush=True)
print("forked", len(children), flush=True)
for pid in children:
    os.kill(pid, signal.SIGKILL)
"""


def _cpus_here() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def _gpus_here() -> tuple[str, ...]:
    """The GPUs `nvidia-smi` lists (the source openmaker uses too), asked here on its own."""
    if shutil.which("nvidia-smi") is None:
        return ()
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
        capture_output=True, text=True, check=True, timeout=20,
    ).stdout  # fmt: skip
    return tuple(line.strip() for line in out.splitlines() if line.strip())


def _memory_for_jobs() -> int:
    """The README: all the memory less a reserve of 10 %, at least 1 GiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    total = int(fields["MemTotal"].split()[0]) * 1024
    return total - max(GIB, total // 10)


def _amounts(cpus: int, memory: float, gpus: int) -> str:
    return f"{cpus} vCPUs, {memory / GIB:.4g} GiB memory and {gpus} GPUs"


@contextmanager
def _stopping_jobs(jobs: TrainingJobs) -> Iterator[None]:
    """Stop, whatever happens, every job of the test still running."""
    try:
        yield
    finally:
        running = [job["TrainingJobName"] for job in jobs.list(status="InProgress")]
        for name in running:
            jobs.stop(name)
        for name in running:
            wait_for(jobs, name)


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


def _fake_nvidia_smi(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    """An `nvidia-smi` first on PATH that answers openmaker's query as a machine with `count`
    GPUs (the only stand-in these tests use: not every machine has GPUs)."""
    monkeypatch.setenv("FAKE_GPU_COUNT", str(count))
    monkeypatch.setenv("PATH", f"{FAKE_GPU}:{os.environ['PATH']}")


def _needs_cgroup(controller: str) -> None:
    root = cgroup_root(controller)
    if os.environ.get(EXPECT_CGROUP_V2):  # the run on cgroup v2 must not pass on anything else
        assert root is not None and (root.parent / "cgroup.controllers").exists(), root
    if root is None:
        pytest.skip(f"no {controller} cgroup controller on this machine")


def test_catalog_holds_real_instance_types_with_their_published_sizes() -> None:
    known = set(shape("TrainingInstanceType").metadata["enum"]) | set(
        shape("ProductionVariantInstanceType").metadata["enum"]
    )
    catalog = instances.catalog()
    assert len(catalog) > 100
    assert set(catalog) <= known
    for family in ("m5", "m6i", "m7i", "c5", "c6i", "c7i", "r5", "r6i", "t3", "g4dn", "g5",
                   "g6", "p3", "p4d", "p5", "trn1", "inf2"):  # fmt: skip
        assert any(name.startswith(f"ml.{family}.") for name in catalog), family
    assert catalog["ml.m5.xlarge"] == instances.Resources(4, 16 * GIB, 0)
    assert catalog["ml.c5.large"] == instances.Resources(2, 4 * GIB, 0)
    assert catalog["ml.g5.12xlarge"] == instances.Resources(48, 192 * GIB, 4)
    assert catalog["ml.p4d.24xlarge"] == instances.Resources(96, 1152 * GIB, 8)


def test_machine_capacity_is_detected_and_settings_override_it(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    machine = capacity.machine(load_settings())
    assert machine.slots == len(_cpus_here())
    assert machine.memory == _memory_for_jobs()
    assert machine.gpu_ids == _gpus_here()

    _fake_nvidia_smi(monkeypatch, 2)
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
        f"machine offers {_amounts(8, 30 * GIB, len(_gpus_here()))} to jobs "
        "(OPENMAKER_CAPACITY=strict; with OPENMAKER_CAPACITY=shared it would run scaled down to "
        "this machine)"
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
    _needs_cgroup("memory")
    monkeypatch.setenv("OPENMAKER_MEMORY_GIB", "3")

    def edit(body: dict) -> None:
        body["ResourceConfig"]["InstanceType"] = instance_type

    _, description = run_script(tmp_path, "scaled", REPORT, edit=edit)
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    assert description["ResourceConfig"]["InstanceType"] == instance_type
    cpus = _cpus_here()
    gpus = ",".join(_gpus_here()) if instance_type != "ml.m5.24xlarge" else ""  # it has none
    report = _report(description)
    assert report == {
        "Cpus_allowed_list": f"{cpus[0]}-{cpus[-1]}" if len(cpus) > 1 else str(cpus[0]),
        "gpus": gpus,
        "nvidia": gpus or "unset",
        "memory": str(3 * GIB),
    }
    training = description["SecondaryStatusTransitions"][2]
    assert f"3 GiB memory, {len(cpus)} CPUs" in training["StatusMessage"]


def test_a_host_gets_its_instance_types_share_of_cpus_and_memory(
    tmp_path: Path, home: Path
) -> None:
    _needs_cgroup("memory")
    cpus = _cpus_here()

    def edit(body: dict) -> None:
        body["ResourceConfig"]["InstanceType"] = "ml.t3.medium"  # 2 vCPUs, 4 GiB

    _, description = run_script(tmp_path, "share", REPORT, edit=edit)
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    report = _report(description)
    assert report["memory"] == str(min(4 * GIB, _memory_for_jobs()))  # shared: at most all
    allowed = report["Cpus_allowed_list"].replace("-", ",").split(",")
    assert {int(c) for c in allowed} == set(cpus[:2])  # the first two, or the only one


def test_a_host_stops_at_its_pids_limit(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _needs_cgroup("pids")
    monkeypatch.setenv("OPENMAKER_PIDS_LIMIT", "16")
    jobs, description = run_script(tmp_path, "pids", FORKS)
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    logs = log_text(jobs, "pids")
    assert "fork failed: Resource temporarily unavailable" in logs
    forked = int(logs.split("forked ")[1].split()[0])
    assert 0 < forked < 16, logs  # the sandbox's own processes count too
    training = description["SecondaryStatusTransitions"][2]
    assert "at most 16 processes" in training["StatusMessage"]


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
    with _stopping_jobs(jobs):
        # ml.m5.large: 2 vCPUs, 8 GiB — one at a time on 2 CPUs (real ones or not).
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
            f"and 0 GPUs); free now: {_amounts(0, 8 * GIB, len(_gpus_here()))}"
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
    _fake_nvidia_smi(monkeypatch, 2)
    monkeypatch.setenv("OPENMAKER_STOP_GRACE_SECONDS", "2")
    image = make_image(tmp_path / "image", RUN_UNTIL_STOPPED)
    jobs = TrainingJobs()
    with _stopping_jobs(jobs):
        for name in ("gpu-a", "gpu-b", "gpu-c"):
            body = request(name, str(image), "s3://b/out")
            body["ResourceConfig"]["InstanceType"] = "ml.g4dn.xlarge"  # 1 GPU
            jobs.create(body)

        def says(name: str, text: str) -> bool:
            return text in log_text(jobs, name).splitlines()

        wait_until(
            lambda: says("gpu-a", "gpus=0 nvidia=0") and says("gpu-b", "gpus=1 nvidia=1"),
            "two GPU jobs",
        )
        assert jobs.describe("gpu-c")["SecondaryStatus"] == "Pending"
        message = jobs.describe("gpu-c")["SecondaryStatusTransitions"][-1]["StatusMessage"]
        # Shared: every job may use every CPU and all the memory; only GPUs are held.
        free = _amounts(len(_cpus_here()), _memory_for_jobs(), 0)
        assert message == (
            "Waiting for capacity on this machine: ml.g4dn.xlarge needs 1 × 1 GPUs; "
            f"free now: {free}"
        )
        jobs.stop("gpu-a")
        wait_until(lambda: says("gpu-c", "gpus=0 nvidia=0"), "the third job to get the freed GPU")
        for name in ("gpu-b", "gpu-c"):
            jobs.stop(name)
        for name in ("gpu-a", "gpu-b", "gpu-c"):
            assert wait_for(jobs, name)["TrainingJobStatus"] == "Stopped"


@pytest.mark.parametrize(
    ("policy", "instance_type", "count", "gpus"),
    [
        ("shared", "ml.m5.large", 1, [""]),  # no GPU: CUDA sees none, even on a GPU machine
        ("shared", "ml.g5.12xlarge", 1, ["0,1,2"]),  # 4 GPUs asked, scaled to the machine's 3
        ("shared", "ml.g4dn.xlarge", 2, ["0", "1"]),  # one each
        ("strict", "ml.g5.2xlarge", 1, ["0"]),
        ("shared", "ml.local", 1, ["0,1,2"]),
    ],
)
def test_gpu_instance_types_get_gpus_named_as_sagemaker_names_them(
    tmp_path: Path,
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
    policy: str,
    instance_type: str,
    count: int,
    gpus: list[str],
) -> None:
    _fake_nvidia_smi(monkeypatch, 3)
    monkeypatch.setenv("OPENMAKER_CAPACITY", policy)
    if policy == "strict":  # the machine as a g5.2xlarge, whatever this one has
        monkeypatch.setenv("OPENMAKER_CPUS", "8")
        monkeypatch.setenv("OPENMAKER_MEMORY_GIB", "32")
    script = 'echo "gpus=${CUDA_VISIBLE_DEVICES-unset} nvidia=${NVIDIA_VISIBLE_DEVICES-unset}"\n'
    jobs, description = run_script(
        tmp_path,
        "gpus",
        f"#!/bin/sh\n{script}",
        edit=lambda body: body["ResourceConfig"].update(
            InstanceType=instance_type, InstanceCount=count
        ),
    )
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    lines = sorted(line for line in log_text(jobs, "gpus").splitlines() if "gpus=" in line)
    # CUDA_VISIBLE_DEVICES always (empty: none); NVIDIA_VISIBLE_DEVICES only with GPUs.
    assert lines == sorted(f"gpus={ids} nvidia={ids or 'unset'}" for ids in gpus)
    training = description["SecondaryStatusTransitions"][2]["StatusMessage"]
    said = [f"GPUs {ids}" if ids else "no GPU" for ids in gpus]  # of one host or another
    assert any(text in training for text in said), training


def test_a_host_over_its_memory_limit_fails_as_the_codes_own_error(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _needs_cgroup("memory")
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


# Inside a private mount namespace: a cgroup2 hierarchy at /sys/fs/cgroup, over whatever was
# there, where it has the memory and pids controllers (exit 77 saying why not), then "$@".
_ONLY_CGROUP_V2 = """
set -e
probe=$(mktemp -d)
mount -t cgroup2 none "$probe" || { echo "the kernel refuses to mount cgroup2"; exit 77; }
offered=$(cat "$probe/cgroup.controllers")
umount "$probe"; rmdir "$probe"
for controller in memory pids; do
  case " $offered " in *" $controller "*) ;; *)
    echo "the $controller controller is bound to a cgroup v1 hierarchy here, so no cgroup2" \
         "hierarchy can have it (this kernel's cgroup2 offers: ${offered:-nothing})"
    exit 77;;
  esac
done
umount -R /sys/fs/cgroup 2>/dev/null || true  # v1 or v2, maybe read-only: replaced here
mount -t cgroup2 none /sys/fs/cgroup
exec "$@"
"""


def test_cgroup_v2_holds_hosts_to_their_memory_and_processes(tmp_path: Path) -> None:
    """The cgroup tests above once more, where only a cgroup2 hierarchy is mounted: each then
    asserts that openmaker used it (most distributions now run on cgroup v2 alone)."""
    if os.environ.get(EXPECT_CGROUP_V2):
        pytest.skip("this is the run on cgroup v2")
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is missing")
    tests = "share_of_cpus or pids_limit or over_its_memory_limit or any_instance_type"
    run = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", _ONLY_CGROUP_V2, "sh",
         sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"--basetemp={tmp_path / 'run'}", __file__, "-k", tests],
        env={**os.environ, EXPECT_CGROUP_V2: "1"},
        cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if run.returncode == 77:
        pytest.skip(run.stdout.strip())
    assert run.returncode == 0, run.stdout + run.stderr
    summary = run.stdout.strip().splitlines()[-1]
    assert summary.startswith("6 passed") and "skipped" not in summary, run.stdout
