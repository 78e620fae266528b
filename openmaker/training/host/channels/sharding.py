"""ShardedByS3Key: which host index gets which object, the same answer on every host and run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def shard(
    items: Sequence[T], index: int, count: int, key: Callable[[T], str] | None = None
) -> list[T]:
    """The items host `index` of `count` gets, in their original order.

    Items are dealt round-robin in the order of `key` (sorted, ties by position), or in their
    own order when there is no key (augmented manifest lines). A host may get none.
    """
    if not 0 <= index < count:
        raise ValueError(f"host index {index} is not one of {count} hosts")
    positions: Sequence[int] = range(len(items))
    if key is not None:
        positions = sorted(positions, key=lambda p: (key(items[p]), p))
    mine = sorted(p for rank, p in enumerate(positions) if rank % count == index)
    return [items[p] for p in mine]
