"""ListProcessingJobs: the shared job-list query (openmaker/jobs/listing.py) over the
processing jobs."""

from __future__ import annotations

from dataclasses import dataclass

from openmaker.jobs.db import ProcessingJobRecord
from openmaker.jobs.listing import JobListQuery
from openmaker.shapes.paging import paginator

PAGES = paginator("ListProcessingJobs")


@dataclass(frozen=True)
class ProcessingQuery(JobListQuery[ProcessingJobRecord]):
    pages = PAGES

    def table(self) -> type[ProcessingJobRecord]:
        return ProcessingJobRecord
