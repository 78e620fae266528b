"""Packing an object's records into the mini-batches posted to the container.

`SingleRecord`: one record a request. `MultiRecord`: as many consecutive records as fit in
`MaxPayloadInMB`. A mini-batch never spans objects (an object's records are packed alone); a
record over the limit fails its object. A limit of 0 means none (the whole object, sent in
chunks).
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


class BatchError(ValueError):
    """A record cannot be sent; the message says which, for a FailureReason."""


@dataclass(frozen=True)
class Batch:
    first: int  # the index of its first record in the object
    records: list[memoryview]

    @property
    def body(self) -> bytes:
        return b"".join(self.records)

    @property
    def size(self) -> int:
        return sum(len(r) for r in self.records)

    @property
    def described(self) -> str:
        last = self.first + len(self.records)
        return f"record {last}" if len(self.records) == 1 else f"records {self.first + 1}-{last}"


def batches(records: list[memoryview], strategy: str, max_payload_mb: int) -> list[Batch]:
    limit = max_payload_mb * MIB
    for index, record in enumerate(records):
        if limit and len(record) > limit:
            raise BatchError(
                f"record {index + 1} is {len(record)} bytes, more than MaxPayloadInMB "
                f"({max_payload_mb} MB)"
            )
    if strategy != "MultiRecord":
        return [Batch(i, [r]) for i, r in enumerate(records)]
    found: list[Batch] = []
    current: list[memoryview] = []
    size = first = 0
    for index, record in enumerate(records):
        if current and limit and size + len(record) > limit:
            found.append(Batch(first, current))
            current, size, first = [], 0, index
        current.append(record)
        size += len(record)
    if current:
        found.append(Batch(first, current))
    return found
