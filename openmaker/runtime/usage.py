"""What containers use of their share of the machine, in percent, as SageMaker measures an
instance (a training, processing or transform host, an endpoint's instance):

- CPUUtilization: the CPU time of their processes over the interval, summed over CPUs as
  SageMaker sums its cores (0 to 100 × CPUs);
- MemoryUtilization: the memory in use (their cgroups', less the page cache the kernel can take
  back), of the memory they were given (the machine's when they have no limit);
- DiskUtilization: the used space of the volume of their folder;
- GPUUtilization, GPUMemoryUtilization: summed over their GPUs, where they have any.

Read from the cgroups openmaker made for them (runtime/limits.py). What cannot be read here (no
cgroup of that kind, no nvidia-smi) is left out, never reported as 0.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from openmaker.runtime.limits import cgroup_of

METRICS = (
    "CPUUtilization",
    "MemoryUtilization",
    "DiskUtilization",
    "GPUUtilization",
    "GPUMemoryUtilization",
)
# How often an instance is sampled (SageMaker publishes a sample a minute; this is finer).
SAMPLE_SECONDS = 5.0
# nvidia-smi is given this long; a hung driver must not hold up what is measured.
GPU_QUERY_SECONDS = 5.0


@dataclass(frozen=True)
class Measured:
    """What one instance is: its containers' cgroups (runtime Limits.cgroup), the memory it was
    given (None: the machine's), its folder and its GPUs."""

    cgroups: Sequence[tuple[str, ...]]
    memory: int | None
    folder: Path
    gpus: tuple[str, ...] = ()


class UsageSampler:
    """Samples one instance; CPU use is a rate, so each sample measures from the one before."""

    def __init__(self) -> None:
        # (when, the CPU time so far), both in nanoseconds.
        self.cpu_before: tuple[int, int] | None = None

    def start(self, measured: Measured) -> None:
        """Count from now (cgroups made as the code starts count from 0 then)."""
        self.cpu_before = _cpu_mark(measured.cgroups) or (time.monotonic_ns(), 0)

    def sample(self, measured: Measured) -> dict[str, float]:
        """The values since the last sample (or `start`); none of what cannot be read."""
        values: dict[str, float] = {}
        mark = _cpu_mark(measured.cgroups)
        if mark is not None:
            before = self.cpu_before or mark
            # A restarted container's new cgroup counts from 0 again: measured from the next.
            if mark[0] > before[0] and mark[1] >= before[1]:
                values["CPUUtilization"] = (mark[1] - before[1]) * 100 / (mark[0] - before[0])
            self.cpu_before = mark
        memory = _memory_percent(measured.cgroups, measured.memory)
        if memory is not None:
            values["MemoryUtilization"] = memory
        disk = _disk_percent(measured.folder)
        if disk is not None:
            values["DiskUtilization"] = disk
        values.update(_gpu_percents(measured.gpus))
        return values


def _cpu_mark(cgroups: Sequence[tuple[str, ...]]) -> tuple[int, int] | None:
    """(now, the CPU time of the processes, ended ones included), in nanoseconds."""
    used = [_cpu_nanoseconds(cgroup) for cgroup in cgroups]
    if not used or any(u is None for u in used):
        return None
    return time.monotonic_ns(), sum(u for u in used if u is not None)


def _cpu_nanoseconds(cgroup: tuple[str, ...]) -> int | None:
    for controller in ("memory", "pids"):  # cgroup v2: one cgroup, its cpu.stat always there
        folder = cgroup_of(cgroup, controller)
        stat = _key_values(folder / "cpu.stat") if folder is not None else {}
        if "usage_usec" in stat:
            return stat["usage_usec"] * 1000
    folder = cgroup_of(cgroup, "cpuacct")  # cgroup v1
    if folder is not None:
        with contextlib.suppress(OSError, ValueError):
            return int((folder / "cpuacct.usage").read_text())
    return None


def _memory_percent(cgroups: Sequence[tuple[str, ...]], given: int | None) -> float | None:
    used = 0
    for cgroup in cgroups:
        folder = cgroup_of(cgroup, "memory")
        if folder is None:
            return None
        stat = _key_values(folder / "memory.stat")
        try:
            if (folder / "memory.current").exists():  # v2
                one = int((folder / "memory.current").read_text()) - stat.get("inactive_file", 0)
            else:
                one = int((folder / "memory.usage_in_bytes").read_text())
                one -= stat.get("total_inactive_file", 0)
        except (OSError, ValueError):
            return None
        used += max(0, one)
    total = given or _machine_memory()
    return None if not cgroups or not total else used * 100 / total


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


def _gpu_percents(gpus: tuple[str, ...]) -> dict[str, float]:
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
