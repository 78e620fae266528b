"""A container's output as lines: read in large pieces, cut where CloudWatch Logs cuts an event."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable

LOG_LINE_LIMIT = 256 * 1024
# Output is read in large pieces: a flood of short lines costs few system calls and calls.
READ_SIZE = 1024 * 1024
# Lines per call at most: what a receiver holds back is then measured finely enough.
BATCH_LINES = 10_000

# Receives (when in ms since the epoch, lines, the bytes they came from) as the output comes.
OnLines = Callable[[int, list[str], int], None]


def pump(fd: int, on_lines: OnLines) -> None:
    """Deliver the output read from `fd` as lines, until its end. `on_lines` may block (a full
    log backlog): the writer's writes then block once the pipe is full, as under a container's
    log driver, so that whatever the code prints, memory stays flat."""
    with contextlib.suppress(OSError):  # a larger pipe only saves system calls
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, READ_SIZE)
    rest = b""
    while chunk := os.read(fd, READ_SIZE):
        messages, rest = split_lines(rest + chunk)
        now = int(time.time() * 1000)
        for start in range(0, len(messages), BATCH_LINES):
            part = messages[start : start + BATCH_LINES]
            on_lines(now, part, len(chunk) * len(part) // len(messages))
    if rest:
        on_lines(int(time.time() * 1000), [_text(rest)], len(rest))


def split_lines(data: bytes) -> tuple[list[str], bytes]:
    """The lines `data` completes, without their line ends, and what is left of an unfinished
    line. A line is cut where CloudWatch Logs cuts an event (LOG_LINE_LIMIT bytes): output
    without line breaks must not pile up in memory."""
    end = data.rfind(b"\n") + 1
    text = data[:end].decode("utf-8", errors="replace")
    messages = text.split("\n")[:-1]
    if "\r" in text:
        messages = [m.rstrip("\r") for m in messages]
    # A character takes at most 4 bytes: only lines this long may need cutting.
    if max(map(len, messages), default=0) > LOG_LINE_LIMIT // 4:
        messages = [piece for m in messages for piece in _cut_line(m)]
    pieces, rest = _cut(data[end:])
    messages.extend(_text(piece) for piece in pieces)
    return messages, rest


def _cut_line(message: str) -> list[str]:
    raw = message.encode()
    if len(raw) <= LOG_LINE_LIMIT:
        return [message]
    pieces, rest = _cut(raw)
    return [_text(piece) for piece in [*pieces, rest]]


def _cut(raw: bytes) -> tuple[list[bytes], bytes]:
    """Pieces of at most LOG_LINE_LIMIT bytes, none splitting a character, and what is left (at
    most the limit)."""
    pieces = []
    while len(raw) > LOG_LINE_LIMIT:
        cut = LOG_LINE_LIMIT
        # Back to the start of a character the limit falls in (continuation bytes: 10xxxxxx).
        while cut > LOG_LINE_LIMIT - 3 and raw[cut] & 0xC0 == 0x80:
            cut -= 1
        pieces.append(raw[:cut])
        raw = raw[cut:]
    return pieces, raw


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").rstrip("\r\n")
