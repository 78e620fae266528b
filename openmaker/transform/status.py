"""A transform job's statuses (TransformJobStatus in the model) and the secondary ones openmaker
keeps for the shared machinery (a job waiting for capacity, or for its worker)."""

from __future__ import annotations

IN_PROGRESS = "InProgress"
COMPLETED = "Completed"
FAILED = "Failed"
STOPPING = "Stopping"
STOPPED = "Stopped"

# A worker runs it, or it waits for one.
ACTIVE = frozenset({IN_PROGRESS, STOPPING})
ENDED = frozenset({COMPLETED, FAILED, STOPPED})

# Secondary statuses (not in the API: DescribeTransformJob has none), for the queue.
PENDING = "Pending"  # waiting for capacity; `failure_reason` is unset, the message is kept apart
STARTING = "Starting"  # a worker is being started
TRANSFORMING = "Transforming"  # its worker runs it
