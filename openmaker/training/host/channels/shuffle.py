"""ShuffleConfig: an order drawn from the seed, a different one for every Pipe epoch."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def shuffled(items: Sequence[T], seed: int, epoch: int) -> list[T]:
    """The items in the order for (`seed`, `epoch`); the same on every host and every run.

    random.Random seeded with a string hashes it with SHA-512, independent of PYTHONHASHSEED.
    """
    order = list(items)
    random.Random(f"openmaker-shuffle:{seed}:{epoch}").shuffle(order)
    return order
