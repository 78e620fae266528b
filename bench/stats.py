"""Repeated timings and their summary."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
MB = 1_000_000


@dataclass(frozen=True)
class Timings:
    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def worst(self) -> float:
        return max(self.seconds)

    def describe(self) -> str:
        return (
            f"median {self.median:.3f} s (min {self.best:.3f}, max {self.worst:.3f}, "
            f"n={len(self.seconds)})"
        )


def timed(action: Callable[[], T]) -> tuple[T, float]:
    """What `action` returned, and the seconds it took on the monotonic clock."""
    start = time.perf_counter()
    result = action()
    return result, time.perf_counter() - start


def rate(size: int, seconds: float) -> str:
    return f"{size / MB / seconds:.0f} MB/s"
