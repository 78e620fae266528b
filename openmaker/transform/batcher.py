"""Packing an object's records into the mini-batches posted to the container, as they are read.

`SingleRecord`: one record a request. `MultiRecord`: as many consecutive records as fit in
`MaxPayloadInMB`. A mini-batch never spans objects (an object's records are packed alone); a
record over the limit fails its object. A limit of 0 means none (the whole object, sent in
chunks).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

MIB = 1024 * 1024


class BatchError(ValueError):
    """A record cannot be sent; the message says which, for a FailureReason."""


@dataclass(frozen=True)
class Batch:
    first: int  # the index of its first record in the object
    records: list[memoryview]  # what the container gets (after the InputFilter)
    originals: list[memoryview]  # the records as read (what JoinSource joins to)

    @property
    def body(self) -> bytes:
        return b"".join(self.records)

    @property
    def described(self) -> str:
        last = self.first + len(self.records)
        return f"record {last}" if len(self.records) == 1 else f"records {self.first + 1}-{last}"


def batches(
    records: Iterable[tuple[memoryview, memoryview]], strategy: str, max_payload_mb: int
) -> Iterator[Batch]:
    """The mini-batches of `records` (each as read and as sent), in order."""
    limit = max_payload_mb * MIB
    single = strategy != "MultiRecord"
    current: list[memoryview] = []
    originals: list[memoryview] = []
    size = first = 0
    for index, (original, record) in enumerate(records):
        if limit and len(record) > limit:
            raise BatchError(
                f"record {index + 1} is {len(record)} bytes, more than MaxPayloadInMB "
                f"({max_payload_mb} MB)"
            )
        if current and (single or (limit and size + len(record) > limit)):
            yield Batch(first, current, originals)
            current, originals, size, first = [], [], 0, index
        current.append(record)
        originals.append(original)
        size += len(record)
    if current:
        yield Batch(first, current, originals)
