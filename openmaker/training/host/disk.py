"""Saying so when a job's disk is full, instead of passing on a bare `[Errno 28]`: its volume
(see volume.py), or openmaker's disk when the job has no volume of its own."""

from __future__ import annotations

import errno

from openmaker.training.host.volume import Volume, no_space_reason

# How obstore (Rust) words the same error in its messages.
_RUST_WORDING = ("No space left on device", "os error 28")


def no_space_left(exc: BaseException) -> bool:
    """Whether `exc`, or an error it was raised from, is a full disk (ENOSPC, EDQUOT)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(words in str(current) for words in _RUST_WORDING):
            return True
        current = current.__cause__ or current.__context__
    return False


def disk_full_reason(exc: BaseException, phase: str, volume: Volume) -> str | None:
    """The FailureReason for a full disk met while `phase` ("downloading input data") on the
    host's `volume`, or None when `exc` is something else."""
    if not no_space_left(exc):
        return None
    if volume.mounted:
        return f"{no_space_reason(volume.size_gb)} while {phase}"
    return f"ClientError: no space left on the job's disk ({volume.folder}) while {phase}"
