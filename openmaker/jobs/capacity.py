"""What an instance type asks for, what this machine offers, and where a job's hosts go.

Two policies (`OPENMAKER_CAPACITY`):
- `shared` (the default, for a laptop or a workstation): every instance type runs, scaled down
  to the machine — a host gets at most the machine's CPUs and memory, and jobs share them, as
  containers without limits would. GPUs are whole devices and never shared: a job waits
  (`Pending`) until enough of them are free.
- `strict` (a machine run as a small cluster): a host gets exactly its instance type's vCPUs,
  memory and GPUs, reserved for it; a job waits until they are free and starts in creation
  order; a job that needs more than the machine has is refused (`ResourceLimitExceeded`).

`ml.local` (or `local`) means the whole machine, in both policies. Placements are plain data
(they are stored with the job): `{"hosts": [{"cpus": [slot, ...], "gpus": [id, ...],
"memory": bytes}, ...]}`; slot `i` is the machine's `i`-th CPU (modulo the real ones, when
settings offer more CPUs than exist).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from openmaker.instances import GIB, Resources, catalog, detect_gpus
from openmaker.jobs.resource import Instances
from openmaker.settings import Settings

LOCAL_TYPES = frozenset({"local", "ml.local"})
# Memory kept back for openmaker itself and the machine: SageMaker's own agents use part of an
# instance's memory too, and a job that takes all of it takes the machine down with it.
MIN_RESERVED_MEMORY = 1 * GIB
RESERVED_MEMORY_PERCENT = 10

# Hosts of one job: each is a sandbox with its own folder, on one machine (or a few).
MAX_HOSTS_PER_JOB = 64

Placement = dict[str, Any]


@dataclass(frozen=True)
class Machine:
    """What this machine offers to jobs."""

    cpu_ids: tuple[int, ...]  # the real CPUs jobs may run on
    slots: int  # how many CPUs jobs may use (settings may say more or fewer than cpu_ids)
    memory: int  # bytes, after the reserve
    gpu_ids: tuple[str, ...]
    policy: str

    @property
    def resources(self) -> Resources:
        return Resources(self.slots, self.memory, len(self.gpu_ids))

    def cpu_of(self, slot: int) -> int:
        return self.cpu_ids[slot % len(self.cpu_ids)]


def machine(settings: Settings) -> Machine:
    cpu_ids = tuple(sorted(os.sched_getaffinity(0)))
    slots = settings.cpus if settings.cpus is not None else len(cpu_ids)
    if settings.memory_gib is not None:
        memory = int(settings.memory_gib * GIB)  # what jobs may use: the reserve is the user's
    else:
        total = _memory_total()
        memory = total - max(MIN_RESERVED_MEMORY, total * RESERVED_MEMORY_PERCENT // 100)
    gpu_ids = detect_gpus()
    if settings.gpus is not None:
        gpu_ids = (gpu_ids + tuple(str(i) for i in range(len(gpu_ids), settings.gpus)))[
            : settings.gpus
        ]
    return Machine(cpu_ids, slots, max(memory, 0), gpu_ids, settings.capacity)


def _memory_total() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def per_host(instance_type: str, machine: Machine) -> Resources:
    """What one host of `instance_type` asks for. `ml.local` and types missing from the catalog
    ask for the whole machine."""
    known = catalog().get(instance_type)
    if instance_type in LOCAL_TYPES or known is None:
        return machine.resources
    return known


def _with_memory(need: Resources, memory: int | None) -> Resources:
    return need if memory is None else Resources(need.cpus, memory, need.gpus)


def describe(amount: Resources) -> str:
    return f"{amount.cpus} vCPUs, {amount.memory / GIB:.4g} GiB memory and {amount.gpus} GPUs"


def check_can_fit(
    instances: Instances, machine: Machine, noun: str, memory: int | None = None
) -> None:
    """Refuse, under the strict policy, a job (a `noun`) this machine could never run.
    `memory`: each host's, in bytes, when not its instance type's."""
    # Imported here: a worker uses this module too, and needs no API model.
    from openmaker.shapes.errors import ResourceLimitExceeded

    instance_type, count = instances.instance_type, instances.count
    if count > MAX_HOSTS_PER_JOB:
        # The model sets no maximum; SageMaker's is the account's quota per instance type.
        raise ResourceLimitExceeded(
            f"The account-level service limit '{instance_type} for {noun} usage' is "
            f"{MAX_HOSTS_PER_JOB} Instances, with current utilization of 0 Instances and a "
            f"request delta of {count} Instances ({instances.member}.InstanceCount)."
        )
    if machine.policy != "strict":
        return
    need = _with_memory(per_host(instance_type, machine), memory)
    has = machine.resources
    if (
        need.cpus * count > has.cpus
        or need.memory * count > has.memory
        or need.gpus * count > (has.gpus)
    ):
        raise ResourceLimitExceeded(
            f"{instances.member}: {count} × {instance_type} needs {count} × ({describe(need)}); "
            f"this machine offers {describe(has)} to jobs (OPENMAKER_CAPACITY=strict; with "
            "OPENMAKER_CAPACITY=shared it would run scaled down to this machine)"
        )


def place(
    instances: Instances, machine: Machine, used: Iterable[Placement], memory: int | None = None
) -> Placement | None:
    """Where the job's hosts run now, given the placements of the jobs running; None when it
    must wait. `memory`: each host's, in bytes, when not its instance type's."""
    used = list(used)
    need = _with_memory(per_host(instances.instance_type, machine), memory)
    cpu_load = Counter(slot for p in used for host in p["hosts"] for slot in host["cpus"])
    busy_gpus = {gpu for p in used for host in p["hosts"] for gpu in host["gpus"]}
    free_memory = machine.memory - sum(host["memory"] for p in used for host in p["hosts"])
    strict = machine.policy == "strict"
    hosts = []
    gpus_each = gpus_per_host(instances, machine)
    for _ in range(instances.count):
        gpus = [g for g in machine.gpu_ids if g not in busy_gpus][:gpus_each]
        if len(gpus) < gpus_each:
            return None
        if strict:
            cpus = [s for s in range(machine.slots) if cpu_load[s] == 0][: need.cpus]
            if len(cpus) < need.cpus or need.memory > free_memory:
                return None
            memory = need.memory
            free_memory -= memory
        else:
            # The least loaded CPUs: jobs sharing the machine spread over it.
            by_load = sorted(range(machine.slots), key=lambda s: (cpu_load[s], s))
            cpus = sorted(by_load[: max(1, min(need.cpus, machine.slots))])
            memory = min(need.memory, machine.memory)
        cpu_load.update(cpus)
        busy_gpus.update(gpus)
        hosts.append({"cpus": cpus, "gpus": gpus, "memory": memory})
    return {"hosts": hosts}


def gpus_per_host(instances: Instances, machine: Machine) -> int:
    """Strict: the instance type's GPUs. Shared: as many of them as the machine can give every
    host of the job at once (none when it has fewer GPUs than the job has hosts)."""
    need = per_host(instances.instance_type, machine).gpus
    if machine.policy == "strict":
        return need
    # A kind may ask for no host through the queue (an endpoint places its own).
    return min(need, len(machine.gpu_ids) // max(1, instances.count))


def waiting_message(
    instances: Instances, machine: Machine, used: Iterable[Placement], memory: int | None = None
) -> str:
    used = list(used)
    instance_type = instances.instance_type
    need = _with_memory(per_host(instance_type, machine), memory)
    if machine.policy == "strict":
        busy = {slot for p in used for host in p["hosts"] for slot in host["cpus"]}
        taken = sum(host["memory"] for p in used for host in p["hosts"])
        free = Resources(
            machine.slots - len(busy),
            machine.memory - taken,
            len(machine.gpu_ids) - sum(len(h["gpus"]) for p in used for h in p["hosts"]),
        )
        wants = f"{instances.count} × ({describe(need)})"
    else:
        free_gpus = len(machine.gpu_ids) - sum(len(h["gpus"]) for p in used for h in p["hosts"])
        free = Resources(machine.slots, machine.memory, free_gpus)
        wants = f"{instances.count} × {gpus_per_host(instances, machine)} GPUs"
    return (
        f"Waiting for capacity on this machine: {instance_type} needs {wants}; "
        f"free now: {describe(free)}"
    )
