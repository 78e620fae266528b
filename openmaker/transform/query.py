"""ListTransformJobs: the shared job-list query (openmaker/jobs/listing.py) over the transform
jobs, newest first unless the request says otherwise (as SageMaker lists them)."""

from __future__ import annotations

from dataclasses import dataclass

from openmaker.jobs.db import TransformJobRecord
from openmaker.jobs.listing import JobListQuery
from openmaker.shapes.paging import paginator

PAGES = paginator("ListTransformJobs")


@dataclass(frozen=True)
class TransformQuery(JobListQuery[TransformJobRecord]):
    pages = PAGES
    default_order = "Descending"

    def table(self) -> type[TransformJobRecord]:
        return TransformJobRecord
