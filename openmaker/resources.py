"""The kinds of resource openmaker runs as jobs. The shared machinery (openmaker/jobs/) imports
no resource: whoever needs the list (a resource's service, the API) takes it from here. A new
kind of job (an endpoint, a transform or processing job) is a `ResourceKind` in its own package,
added to `KINDS`."""

from __future__ import annotations

from openmaker.jobs import resource
from openmaker.jobs.resource import ResourceKind
from openmaker.processing.kind import PROCESSING
from openmaker.serving.kind import ENDPOINT
from openmaker.training.kind import TRAINING

KINDS: tuple[ResourceKind, ...] = (TRAINING, ENDPOINT, PROCESSING)


def of_arn(arn: str) -> ResourceKind | None:
    """The kind of the resource `arn` names, if openmaker keeps that kind."""
    return resource.of_arn(KINDS, arn)


def log_groups() -> tuple[str, ...]:
    return resource.log_groups(KINDS)
