"""A training job after an infrastructure failure: restarted under its RetryStrategy (each
restart restores the checkpoints, so code that resumes from them goes on where it was), or
ended."""

from __future__ import annotations

from typing import TYPE_CHECKING

from openmaker.jobs import retry
from openmaker.training import state
from openmaker.training.status import SecondaryStatus

if TYPE_CHECKING:
    from openmaker.jobs.db import TrainingJob


def restart_or_fail(job: TrainingJob, what: str) -> bool:
    """After an infrastructure failure (`what` happened): mark the job for a new attempt
    (`Restarting`; the queue starts it) or end it. True when it is to restart."""
    if job.status == state.STOPPING:  # the stop asked for is what happens
        state.finish(job, job.stop_requested or SecondaryStatus.STOPPED, None)
        return False
    attempt = retry.next_attempt(job.request, job.attempts)
    if attempt is None:
        state.finish(job, SecondaryStatus.FAILED, retry.failure_reason(job.request, what))
        return False
    job.attempts = attempt
    state.release(job)
    allowed = retry.retries_allowed(job.request)
    message = (
        f"{SecondaryStatus.RESTARTING.message}: {what} "
        f"(attempt {attempt} of {allowed + 1}; checkpoints are restored)"
    )
    state.enter(job, SecondaryStatus.RESTARTING, message)
    return True
