"""AWS event-stream messages, as botocore parses InvokeEndpointWithResponseStream's body.

A message is a prelude (total length, headers length, the prelude's CRC32), headers (name,
type 7 = string, value), the payload, and the CRC32 of everything before it; integers are
big-endian.
"""

from __future__ import annotations

import json
import struct
import zlib

_STRING = 7


def _headers(headers: dict[str, str]) -> bytes:
    out = bytearray()
    for name, value in headers.items():
        raw_name, raw_value = name.encode(), value.encode()
        out += struct.pack(">B", len(raw_name)) + raw_name
        out += struct.pack(">BH", _STRING, len(raw_value)) + raw_value
    return bytes(out)


def message(headers: dict[str, str], payload: bytes) -> bytes:
    encoded = _headers(headers)
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + encoded + payload
    return body + struct.pack(">I", zlib.crc32(body))


def payload_part(data: bytes) -> bytes:
    """A `PayloadPart` event: its `Bytes` member is the event's payload."""
    return message(
        {
            ":event-type": "PayloadPart",
            ":content-type": "application/octet-stream",
            ":message-type": "event",
        },
        data,
    )


def stream_error(kind: str, text: str, error_code: str | None = None) -> bytes:
    """A modelled exception event of the stream: `ModelStreamError` (with its ErrorCode) or
    `InternalStreamFailure`."""
    members: dict[str, str] = {"Message": text}
    if error_code is not None:
        members["ErrorCode"] = error_code
    return message(
        {
            ":exception-type": kind,
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        json.dumps(members).encode(),
    )
