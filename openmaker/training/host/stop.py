"""Why a host's code is stopped before its end, and the switch that asks for it."""

from __future__ import annotations

import threading
from enum import StrEnum


class StopReason(StrEnum):
    """str-valued: each is the secondary status the job ends with when stopped for it."""

    # StopTrainingJob (or the worker's SIGTERM).
    STOPPED = "Stopped"
    # StoppingCondition.MaxRuntimeInSeconds reached.
    MAX_RUNTIME_EXCEEDED = "MaxRuntimeExceeded"
    # Another host of the job failed: the job fails anyway.
    FAILED = "Failed"


class StopControl:
    """Set from outside (StopTrainingJob) or by the time limit; read by the running host."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: StopReason | None = None

    def request(self, reason: str = StopReason.STOPPED) -> None:
        """Ask every host to stop; the first reason given is the one kept. `reason` is a
        StopReason or its value (a job's stop request, as stored)."""
        if not self._event.is_set():
            self.reason = StopReason(reason)
            self._event.set()

    @property
    def stopped(self) -> StopReason | None:
        """The reason when the job was stopped (asked for, or at its time limit), not failed."""
        return None if self.reason in (None, StopReason.FAILED) else self.reason

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)
