"""Splitting an input object into records, by the job's `SplitType`.

`None`: the whole object is one record. `Line`: each line, its newline kept (blank lines are no
records). `RecordIO` (MXNet's framing) and `TFRecord`: each record with its framing kept, as
SageMaker passes them on; a record split into parts by RecordIO is one record. A record is a
slice of the object (no copy).

`records` splits an object as it is read: only the record being completed is held beyond the
chunk at hand (`None` holds the whole object: it is one record).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

RECORDIO_MAGIC = 0xCED7230A
_LENGTH_BITS = (1 << 29) - 1
# RecordIO's continuation flag: 0 a whole record; 1 its first part, 2 a middle one, 3 its last.
_WHOLE, _FIRST, _LAST = 0, 1, 3


class SplitError(ValueError):
    """The object is not in the framing its SplitType says; the message says where."""


def split(data: memoryview, split_type: str, base: int = 0) -> list[memoryview]:
    """`data`'s records; `base`: where it starts in its object (for the errors' positions)."""
    if split_type == "Line":
        return _lines(data)
    if split_type == "RecordIO":
        return _recordio(data, base)
    if split_type == "TFRecord":
        return _tfrecord(data, base)
    return [data] if len(data) else []


def records(chunks: Iterable[bytes | bytearray], split_type: str) -> Iterator[memoryview]:
    """The records of an object read as `chunks`, as `split` would find them in the whole."""
    if split_type not in ("Line", "RecordIO", "TFRecord"):
        whole = b"".join(chunks)
        yield from split(memoryview(whole), split_type)
        return
    pending = bytearray()
    base = 0  # where `pending` starts in the object
    for chunk in chunks:
        pending += chunk
        end = _complete(pending, split_type, base)
        if end:
            done = bytes(pending[:end])
            del pending[:end]
            yield from split(memoryview(done), split_type, base)
            base += end
    # The rest: a last line without its newline, or a cut record (which split reports).
    yield from split(memoryview(bytes(pending)), split_type, base)


def _complete(data: bytearray, split_type: str, base: int) -> int:
    """How many bytes at the start of `data` (at `base` in the object) are whole records."""
    if split_type == "Line":
        return data.rfind(b"\n") + 1
    offset = end = 0
    while offset + (8 if split_type == "RecordIO" else 12) <= len(data):
        if split_type == "TFRecord":
            (length,) = struct.unpack_from("<Q", data, offset)
            offset += 12 + length + 4
            flag = _WHOLE
        else:
            magic, word = struct.unpack_from("<II", data, offset)
            if magic != RECORDIO_MAGIC:
                raise SplitError(f"no RecordIO magic number at byte {base + offset}")
            flag, length = word >> 29, word & _LENGTH_BITS
            offset += 8 + length + (-length % 4)
        if offset > len(data):
            break
        if flag in (_WHOLE, _LAST):
            end = offset
    return end


def _lines(data: memoryview) -> list[memoryview]:
    raw = data.obj if isinstance(data.obj, bytes) else bytes(data)
    records, start = [], 0
    while start < len(data):
        end = raw.find(b"\n", start)
        end = len(data) if end < 0 else end + 1
        if raw[start:end].strip(b"\r\n"):
            records.append(data[start:end])
        start = end
    return records


def _recordio(data: memoryview, base: int) -> list[memoryview]:
    records: list[memoryview] = []
    start = offset = 0
    whole = True  # between records (not inside a multi-part one)
    while offset < len(data):
        if offset + 8 > len(data):
            raise SplitError(f"a RecordIO header at byte {base + offset} is cut short")
        magic, header = struct.unpack_from("<II", data, offset)
        if magic != RECORDIO_MAGIC:
            raise SplitError(f"no RecordIO magic number at byte {base + offset}")
        flag, length = header >> 29, header & _LENGTH_BITS
        end = offset + 8 + length + (-length % 4)
        if end > len(data):
            raise SplitError(f"the RecordIO record at byte {base + offset} is cut short")
        if whole:
            start = offset
        if flag in (_WHOLE, _LAST):
            records.append(data[start:end])
            whole = True
        elif flag == _FIRST:
            whole = False
        offset = end
    if not whole:
        raise SplitError("the last RecordIO record has no final part")
    return records


def _tfrecord(data: memoryview, base: int) -> list[memoryview]:
    records: list[memoryview] = []
    offset = 0
    while offset < len(data):
        if offset + 12 > len(data):
            raise SplitError(f"a TFRecord header at byte {base + offset} is cut short")
        (length,) = struct.unpack_from("<Q", data, offset)
        end = offset + 12 + length + 4
        if end > len(data):
            raise SplitError(f"the TFRecord record at byte {base + offset} is cut short")
        records.append(data[offset:end])
        offset = end
    return records
