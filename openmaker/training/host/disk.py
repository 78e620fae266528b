"""Saying so when a job's disk is full, instead of passing on a bare `[Errno 28]`: its volume
(see volume.py), or openmaker's disk when the job has no volume of its own."""

from __future__ import annotations

from openmaker.runtime.volume import no_space_left
from openmaker.training.host.volume import Volume, no_space_reason


def disk_full_reason(exc: BaseException, phase: str, volume: Volume) -> str | None:
    """The FailureReason for a full disk met while `phase` ("downloading input data") on the
    host's `volume`, or None when `exc` is something else."""
    if not no_space_left(exc):
        return None
    if volume.mounted:
        return f"{no_space_reason(volume.size_gb)} while {phase}"
    return f"ClientError: no space left on the job's disk ({volume.folder}) while {phase}"
