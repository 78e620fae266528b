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
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0, 0.0
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def descendants(pid: int) -> list[int]:
    """Every process under `pid` (not `pid` itself)."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except FileNotFoundError:
                continue
            found += children
            pending += children
    return found


def total(pids: list[int]) -> float:
    return sum(seconds(pid) for pid in pids)
