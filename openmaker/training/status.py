"""The TrainingJob resource's statuses, as the model names them, with the messages SageMaker
shows for each secondary status.

str-valued enums: a status is stored and sent as its plain name, and compares equal to it.
"""

from __future__ import annotations

from enum import StrEnum


class TrainingJobStatus(StrEnum):
    IN_PROGRESS = "InProgress"
    COMPLETED = "Completed"
    FAILED = "Failed"
    STOPPING = "Stopping"
    STOPPED = "Stopped"


class SecondaryStatus(StrEnum):
    """A secondary status, with its default StatusMessage (a transition may say more)."""

    STARTING = "Starting"
    PENDING = "Pending"
    DOWNLOADING = "Downloading"
    TRAINING = "Training"
    UPLOADING = "Uploading"
    RESTARTING = "Restarting"
    STOPPING = "Stopping"
    COMPLETED = "Completed"
    FAILED = "Failed"
    STOPPED = "Stopped"
    MAX_RUNTIME_EXCEEDED = "MaxRuntimeExceeded"

    @property
    def message(self) -> str:
        return _MESSAGES[self]


# What SageMaker shows for each (Pending and Restarting always say more: what a job waits
# for, what failed).
_MESSAGES = {
    SecondaryStatus.STARTING: "Preparing the instances for training",
    SecondaryStatus.PENDING: "Waiting for capacity on this machine",
    SecondaryStatus.DOWNLOADING: "Downloading input data",
    SecondaryStatus.TRAINING: "Training image download completed. Training in progress.",
    SecondaryStatus.UPLOADING: "Uploading generated training model",
    SecondaryStatus.RESTARTING: "Restarting the training job after an infrastructure failure",
    SecondaryStatus.STOPPING: "Stopping the training job",
    SecondaryStatus.COMPLETED: "Training job completed",
    SecondaryStatus.FAILED: "Training job failed",
    SecondaryStatus.STOPPED: "Training job stopped",
    SecondaryStatus.MAX_RUNTIME_EXCEEDED: (
        "Training job stopped because it exceeded the maximum allowed runtime"
    ),
}

# The primary statuses of a job that has ended, and of one with work under way (a worker runs
# it, or it waits for one).
ENDED = frozenset(
    {TrainingJobStatus.COMPLETED, TrainingJobStatus.FAILED, TrainingJobStatus.STOPPED}
)
ACTIVE = frozenset({TrainingJobStatus.IN_PROGRESS, TrainingJobStatus.STOPPING})

# Which primary status each terminal secondary status belongs to.
PRIMARY_OF = {
    SecondaryStatus.COMPLETED: TrainingJobStatus.COMPLETED,
    SecondaryStatus.FAILED: TrainingJobStatus.FAILED,
    SecondaryStatus.STOPPED: TrainingJobStatus.STOPPED,
    SecondaryStatus.MAX_RUNTIME_EXCEEDED: TrainingJobStatus.STOPPED,
}
# How a stop ends a job: asked for, or at its time limit.
STOPPED_BY = frozenset({SecondaryStatus.STOPPED, SecondaryStatus.MAX_RUNTIME_EXCEEDED})


def message_of(secondary: str, detail: str | None = None) -> str:
    """The StatusMessage of entering `secondary`; `detail` (what a host adds) in parentheses."""
    try:
        message = SecondaryStatus(secondary).message
    except ValueError:
        message = secondary
    return f"{message} ({detail})" if detail else message
