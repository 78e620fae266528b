"""Byte counts of a transfer turned into a few progress events a second."""

from __future__ import annotations

import time

from openmaker.host.events import Emit, TransferProgress


class ProgressMeter:
    """Turns a stream of byte counts into at most a few progress events a second."""

    INTERVAL = 0.25

    def __init__(self, phase: str, total: int, emit: Emit) -> None:
        self.phase, self.total, self.emit = phase, total, emit
        self.done = 0
        self.last = 0.0
        emit(TransferProgress(phase, 0, total))

    def add(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.last >= self.INTERVAL:
            self.last = now
            self.emit(TransferProgress(self.phase, self.done, self.total))

    def finish(self) -> None:
        self.emit(TransferProgress(self.phase, self.done, max(self.total, self.done)))
