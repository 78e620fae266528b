"""MXNet RecordIO framing for Pipe channels with RecordWrapperType RecordIO.

A record is a little-endian uint32 magic, a little-endian uint32 length whose upper 3 bits
(the continuation flag) are 0, the payload, and zero padding to a multiple of 4 bytes.
"""

from __future__ import annotations

import struct

MAGIC = 0xCED7230A
# The length field has 29 bits; a longer payload would need split records.
MAX_RECORD = (1 << 29) - 1


class RecordTooLarge(ValueError):
    pass


def header(length: int) -> bytes:
    if not 0 <= length <= MAX_RECORD:
        raise RecordTooLarge(f"{length} bytes is more than a RecordIO record holds ({MAX_RECORD})")
    return struct.pack("<II", MAGIC, length)


def padding(length: int) -> bytes:
    return b"\0" * (-length % 4)
