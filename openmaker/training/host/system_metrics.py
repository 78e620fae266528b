"""A host's utilization while its code runs, as SageMaker publishes it for a training job's
instances (namespace `/aws/sagemaker/TrainingJobs`, dimension `Host`), all in percent:

- CPUUtilization: the CPU time of the host's processes over the interval, summed over CPUs as
  SageMaker sums its cores (0 to 100 × CPUs);
- MemoryUtilization: the host's memory in use (its cgroup's, less the page cache the kernel
  can take back), of the memory it was given (the machine's when it has no limit);
- DiskUtilization: the used space of the host's volume;
- GPUUtilization, GPUMemoryUtilization: summed over the host's GPUs, where it has any.

A sample is taken every `SAMPLE_SECONDS` and once more when the code has ended. What cannot be
read here (no cgroup of that kind, no nvidia-smi) is left out, never reported as 0.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from openmaker.training.host.events import Emit, SystemMetrics
from openmaker.training.host.limits import cgroup_of
from openmaker.training.host.spec import HostSpec

SAMPLE_SECONDS = 5.0
# nvidia-smi is given this long; a hung driver must not hold up the job's end.
GPU_QUERY_SECONDS = 5.0


@contextlib.contextmanager
def sampling(spec: HostSpec, emit: Emit, every: float = SAMPLE_SECONDS) -> Iterator[None]:
    """Sample the host's utilization in a thread while the body runs, and once at its end."""
    sampler = _Sampler(spec, emit)
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            sampler.sample()

    thread = threading.Thread(target=loop, name=f"metrics-{spec.host_name}", daemon=True)
    sampler.start()
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        sampler.sample()


class _Sampler:
    def __init__(self, spec: HostSpec, emit: Emit) -> None:
        self.spec, self.emit = spec, emit
        # (when, the host's CPU time so far), both in nanoseconds: CPU use is a rate. The
        # host's cgroups are made as its code starts, counting from 0 then.
        self.cpu_before: tuple[int, int] | None = None

    def start(self) -> None:
        self.cpu_before = _cpu_mark(self.spec) or (time.monotonic_ns(), 0)

    def sample(self) -> None:
        try:
            values = self._values()
        except Exception:  # a metric never fails the job it measures
            return
        if values:
            self.emit(SystemMetrics(self.spec.host_name, int(time.time() * 1000), values))

    def _values(self) -> dict[str, float]:
        values: dict[str, float] = {}
        mark = _cpu_mark(self.spec)
        if mark is not None:
            before = self.cpu_before or mark
            if mark[0] > before[0] and mark[1] >= before[1]:
                values["CPUUtilization"] = (mark[1] - before[1]) * 100 / (mark[0] - before[0])
            self.cpu_before = mark
        memory = _memory_percent(self.spec)
        if memory is not None:
            values["MemoryUtilization"] = memory
        disk = _disk_percent(self.spec.work_dir)
        if disk is not None:
            values["DiskUtilization"] = disk
        values.update(_gpu_percents(self.spec))
        return values


def _cpu_mark(spec: HostSpec) -> tuple[int, int] | None:
    """(now, the CPU time of the host's processes, ended ones included), in nanoseconds."""
    used = _cpu_nanoseconds(spec)
    return None if used is None else (time.monotonic_ns(), used)


def _cpu_nanoseconds(spec: HostSpec) -> int | None:
    for controller in ("memory", "pids"):  # cgroup v2: one cgroup, its cpu.stat always there
        cgroup = cgroup_of(spec, controller)
        stat = _key_values(cgroup / "cpu.stat") if cgroup is not None else {}
        if "usage_usec" in stat:
            return stat["usage_usec"] * 1000
    cgroup = cgroup_of(spec, "cpuacct")  # cgroup v1
    if cgroup is not None:
        with contextlib.suppress(OSError, ValueError):
            return int((cgroup / "cpuacct.usage").read_text())
    return None


def _memory_percent(spec: HostSpec) -> float | None:
    cgroup = cgroup_of(spec, "memory")
    if cgroup is None:
        return None
    stat = _key_values(cgroup / "memory.stat")
    try:
        if (cgroup / "memory.current").exists():  # v2
            used = int((cgroup / "memory.current").read_text()) - stat.get("inactive_file", 0)
        else:
            used = int((cgroup / "memory.usage_in_bytes").read_text())
            used -= stat.get("total_inactive_file", 0)
    except (OSError, ValueError):
        return None
    total = spec.resources.memory if spec.resources and spec.resources.memory else _machine_memory()
    return None if not total else max(0, used) * 100 / total


def _machine_memory() -> int | None:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return None


def _disk_percent(folder: Path) -> float | None:
    """Used of what the code may use, as `df` counts it (the root-reserved blocks left out)."""
    try:
        disk = os.statvfs(folder)
    except OSError:
        return None
    used = (disk.f_blocks - disk.f_bfree) * disk.f_frsize
    usable = used + disk.f_bavail * disk.f_frsize
    return used * 100 / usable if usable else None


def _gpu_percents(spec: HostSpec) -> dict[str, float]:
    gpus = spec.resources.gpus if spec.resources else ()
    smi = shutil.which("nvidia-smi")
    if not gpus or smi is None:
        return {}
    try:
        answer = subprocess.run(
            [
                smi,
                "--query-gpu=utilization.gpu,memory.used,memory.total",
                "--format=csv,noheader,nounits",
                f"--id={','.join(gpus)}",
            ],
            capture_output=True,
            text=True,
            timeout=GPU_QUERY_SECONDS,
            check=True,
        ).stdout
        rows = [[float(v) for v in line.split(",")] for line in answer.splitlines() if line]
    except (OSError, subprocess.SubprocessError, ValueError):
        return {}
    return {
        "GPUUtilization": sum(row[0] for row in rows),
        "GPUMemoryUtilization": sum(row[1] * 100 / row[2] for row in rows if row[2]),
    }


def _key_values(path: Path) -> dict[str, int]:
    """A cgroup file of `name value` lines (cpu.stat, memory.stat); empty when unreadable."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    values = {}
    for line in lines:
        name, _, value = line.partition(" ")
        if value.strip().isdigit():
            values[name] = int(value)
    return values
