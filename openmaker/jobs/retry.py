"""RetryStrategy: a job that fails for a cause outside its code is started again.

SageMaker's `MaximumRetryAttempts` is "the number of times to retry the job" (1–30): a job runs
at most 1 + MaximumRetryAttempts times. Only infrastructure failures count (a worker or a
host's process killed from outside, openmaker itself gone); the code's own failure
(AlgorithmError) and a stop never restart a job. What a restart means for a job's statuses is
its kind's (openmaker/training/retry.py for training jobs).
"""

from __future__ import annotations

from typing import Any


def retries_allowed(request: dict[str, Any]) -> int:
    strategy = request.get("RetryStrategy") or {}
    return int(strategy.get("MaximumRetryAttempts", 0))


def next_attempt(request: dict[str, Any], attempts: int | None) -> int | None:
    """After an infrastructure failure of attempt `attempts`: the number of the attempt that
    restarts the job, or None when its retries are spent."""
    attempts = attempts or 1
    return attempts + 1 if attempts <= retries_allowed(request) else None


def failure_reason(request: dict[str, Any], what: str) -> str:
    """The FailureReason of a job that an infrastructure failure ends (`what` happened)."""
    reason = f"InternalServerError: {what}"
    if allowed := retries_allowed(request):
        reason += f"; the job was retried {allowed} times (RetryStrategy.MaximumRetryAttempts)"
    return reason
