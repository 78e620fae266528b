"""RetryStrategy: a job that fails for a cause outside its code is started again.

SageMaker's `MaximumRetryAttempts` is "the number of times to retry the job" (1–30): a job runs
at most 1 + MaximumRetryAttempts times. Only infrastructure failures count (a worker or a
host's process killed from outside, openmaker itself gone); the code's own failure
(AlgorithmError) and a stop never restart a job. Each restart restores the checkpoints, so
code that resumes from them goes on where it was.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from openmaker.training import state
from openmaker.training.status import SecondaryStatus

if TYPE_CHECKING:
    from openmaker.jobs.db import TrainingJob


def retries_allowed(request: dict[str, Any]) -> int:
    strategy = request.get("RetryStrategy") or {}
    return int(strategy.get("MaximumRetryAttempts", 0))


def restart_or_fail(job: TrainingJob, what: str) -> bool:
    """After an infrastructure failure (`what` happened): mark the job for a new attempt
    (`Restarting`; the queue starts it) or end it. True when it is to restart."""
    if job.status == state.STOPPING:  # the stop asked for is what happens
        state.finish(job, job.stop_requested or SecondaryStatus.STOPPED, None)
        return False
    allowed = retries_allowed(job.request)
    attempts = job.attempts or 1
    if attempts <= allowed:
        job.attempts = attempts + 1
        state.release(job)
        message = (
            f"Restarting the training job after an infrastructure failure: {what} "
            f"(attempt {job.attempts} of {allowed + 1}; checkpoints are restored)"
        )
        state.enter(job, SecondaryStatus.RESTARTING, message)
        return True
    reason = f"InternalServerError: {what}"
    if allowed:
        reason += f"; the job was retried {allowed} times (RetryStrategy.MaximumRetryAttempts)"
    state.finish(job, SecondaryStatus.FAILED, reason)
    return False
