"""Byte counts of a transfer turned into a few progress events a second."""

from __future__ import annotations

import time

from openmaker.training.host.events import Emit, TransferProgress


class ProgressMeter:
    """Turns a stream of byte counts into at most a few progress events a second."""

    INTERVAL = 0.25

    def __init__(self, phase: str, total: int, emit: Emit) -> None:
        self.phase, self.total, self.emit = phase, total, emit
        self.done = 0
        self.last = 0.0
        self.started = time.monotonic()
        emit(TransferProgress(phase, 0, total, 0.0))

    def add(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.last >= self.INTERVAL:
            self.last = now
            self.emit(TransferProgress(self.phase, self.done, self.total, now - self.started))

    def finish(self) -> None:
        seconds = time.monotonic() - self.started
        self.emit(TransferProgress(self.phase, self.done, max(self.total, self.done), seconds))
