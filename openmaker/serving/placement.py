"""An endpoint's instances as the capacity machinery counts them (openmaker/jobs/capacity.py).

The queue starts an endpoint's worker without reserving anything (`kind.py`: its request asks
for no host); the worker reserves each fleet it starts here — at creation, for an update's new
fleet while the old one still serves, for instances added by a capacity change — and gives
back what it stops. A reservation is made under the database's write lock against the
placements of every job and endpoint running, as the queue places training jobs. What does not
fit now is refused, as SageMaker refuses an endpoint for want of instances (the endpoint
fails, an update leaves the old fleet serving): an instance never waits for capacity.

The endpoint's placement is `{"hosts": [{"cpus", "gpus", "memory", "instance"}, ...]}`: the
queue's shape, each host naming the instance holding it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from openmaker.jobs import capacity
from openmaker.jobs.capacity import Placement
from openmaker.jobs.db import EndpointRecord
from openmaker.jobs.resource import Instances
from openmaker.settings import Settings


class InsufficientCapacity(Exception):
    """The instances do not fit on this machine now; the message says what is missing."""


@dataclass(frozen=True)
class Share:
    """One instance's share of the machine (`cpus`: real CPU ids)."""

    cpus: tuple[int, ...]
    memory: int
    gpus: tuple[str, ...]


@dataclass(frozen=True)
class Wanted:
    instance: str  # its id
    instance_type: str
    member: str  # the request member asking for it, for messages
    memory: int | None = None  # bytes, when not the instance type's (a serverless instance)


def reserve(
    settings: Settings, writers: sessionmaker[Session], name: str, wanted: Sequence[Wanted]
) -> dict[str, Share]:
    """Reserve a share for each of `wanted` (added to what endpoint `name` holds)."""
    from openmaker.resources import KINDS  # the kinds list imports this package's kind

    machine = capacity.machine(settings)
    with writers() as session:
        used: list[Placement] = []
        for kind in KINDS:
            table = kind.table()
            for job in session.query(table).filter(table.status.in_(kind.active)):
                if job.placement is not None and not (
                    isinstance(job, EndpointRecord) and job.name == name
                ):
                    used.append(job.placement)
        row = session.get(EndpointRecord, name)
        if row is None:
            raise InsufficientCapacity("the endpoint was deleted")
        mine = list((row.placement or {}).get("hosts", []))
        used.append({"hosts": mine})
        added: list[dict[str, Any]] = []
        for group in _by_type(wanted):
            instances = Instances(group[0].instance_type, len(group), group[0].member)
            # A serverless instance fits by its MemorySizeInMB, not its type's memory.
            memory = group[0].memory
            placed = capacity.place(instances, machine, used, memory)
            if placed is None:
                raise InsufficientCapacity(_message(instances, machine, used, memory))
            used.append(placed)
            for want, host in zip(group, placed["hosts"], strict=True):
                added.append({**host, "instance": want.instance})
        row.placement = {"hosts": mine + added}
        session.commit()
    return {
        str(host["instance"]): Share(
            tuple(machine.cpu_of(slot) for slot in host["cpus"]),
            int(host["memory"]),
            tuple(host["gpus"]),
        )
        for host in added
    }


def release(writers: sessionmaker[Session], name: str, instances: Iterable[str]) -> None:
    """Give back the shares of `instances` (stopped for good)."""
    gone = set(instances)
    with writers() as session:
        row = session.get(EndpointRecord, name)
        if row is None or row.placement is None:
            return
        hosts = [h for h in row.placement.get("hosts", []) if h.get("instance") not in gone]
        row.placement = {"hosts": hosts}
        session.commit()


def _by_type(wanted: Sequence[Wanted]) -> list[list[Wanted]]:
    groups: dict[tuple[str, str, int | None], list[Wanted]] = {}
    for want in wanted:
        groups.setdefault((want.instance_type, want.member, want.memory), []).append(want)
    return list(groups.values())


def _message(
    instances: Instances, machine: capacity.Machine, used: list[Placement], memory: int | None
) -> str:
    waiting = capacity.waiting_message(instances, machine, used, memory)
    free = waiting.split("; free now: ", 1)[-1]
    size = "" if memory is None else f" of {memory // 2**20} MB"
    return (
        f"Unable to provision the requested ML compute capacity ({instances.count} x "
        f"{instances.instance_type}{size} for {instances.member}): InsufficientInstanceCapacity on "
        f"this machine (OPENMAKER_CAPACITY={machine.policy}); free now: {free}"
    )
