"""CPU time of processes (and their descendants), as the kernel counts it, for the benches that
say where a request's CPU goes."""

from __future__ import annotations

import os
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def seconds(pid: int) -> float:
    """User plus system CPU seconds of `pid` (all its threads); 0 once it is gone."""
    return sum(split(pid))


def split(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of `pid` (all its threads); zeros once it is gone."""
    counted = times(pid)
    return (0.0, 0.0) if counted is None else (counted[0], counted[1])


def times(pid: int) -> tuple[float, float, float, float] | None:
    """utime, stime, then its reaped children's cutime, cstime of `pid`, in seconds; None once
    it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    utime, stime, cutime, cstime = (int(value) / TICKS for value in fields[11:15])
    return utime, stime, cutime, cstime


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (OSError once it is gone; a thread of it that ends
    meanwhile has none)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    return found


def descendants(pid: int) -> list[int]:
    """Every process under `pid` (not `pid` itself)."""
    found: list[int] = []
    pending = [pid]
    while pending:
        try:
            under = children(pending.pop())
        except OSError:  # ended meanwhile
            continue
        found += under
        pending += under
    return found


def total(pids: list[int]) -> float:
    return sum(seconds(pid) for pid in pids)
