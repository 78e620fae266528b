"""Splitting an object as it is read gives the records splitting it whole gives, whatever the
chunks (a record cut by a chunk's end is whole once the rest comes), and the same errors."""

from __future__ import annotations

import struct

import pytest

from openmaker.transform.splitter import RECORDIO_MAGIC, SplitError, records, split


def _recordio(payload: bytes, flag: int = 0) -> bytes:
    header = struct.pack("<II", RECORDIO_MAGIC, (flag << 29) | len(payload))
    return header + payload + b"\0" * (-len(payload) % 4)


def _tfrecord(payload: bytes) -> bytes:
    return struct.pack("<Q", len(payload)) + b"crc0" + payload + b"crc1"


OBJECTS = {
    "Line": b"1,2\n3,4\n\n5,6\r\n7,8",
    "RecordIO": _recordio(b"abc")
    + _recordio(b"de", 1)
    + _recordio(b"fgh", 2)
    + _recordio(b"i", 3)
    + _recordio(b"jklmn"),
    "TFRecord": _tfrecord(b"one") + _tfrecord(b"") + _tfrecord(b"three!"),
    "None": b"the whole object",
}


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("split_type", sorted(OBJECTS))
@pytest.mark.parametrize("size", [1, 3, 7, 1000])
def test_records_of_chunks_are_the_records_of_the_whole(split_type: str, size: int) -> None:
    data = OBJECTS[split_type]
    whole = [bytes(r) for r in split(memoryview(data), split_type)]
    assert len(whole) > 1 or split_type == "None"
    assert [bytes(r) for r in records(_chunks(data, size), split_type)] == whole


@pytest.mark.parametrize("split_type", ["RecordIO", "TFRecord"])
def test_a_cut_record_fails_with_its_place_in_the_object(split_type: str) -> None:
    data = OBJECTS[split_type][:-2]
    with pytest.raises(SplitError) as whole:
        split(memoryview(data), split_type)
    with pytest.raises(SplitError) as streamed:
        list(records(_chunks(data, 5), split_type))
    assert str(streamed.value) == str(whole.value)
