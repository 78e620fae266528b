"""ListTrainingJobs: the shared job-list query (openmaker/jobs/listing.py) over the training
jobs, with their own filter, WarmPoolStatusEquals."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Select, false, select
from sqlalchemy.orm import load_only

from openmaker.jobs.db import TrainingJob
from openmaker.jobs.listing import JobListQuery, sort_columns
from openmaker.shapes.paging import paginator
from openmaker.training import state

SORT_COLUMNS = sort_columns(TrainingJob)
PAGES = paginator("ListTrainingJobs")

keep_alive = TrainingJob.request[("ResourceConfig", "KeepAlivePeriodInSeconds")]


@dataclass(frozen=True)
class JobQuery(JobListQuery[TrainingJob]):
    pages = PAGES

    # openmaker keeps no warm pool: one asked for is Terminated when its job ends
    # (openmaker/training/describe.py), and no pool is ever in any other status.
    warm_pool_status: str | None = None

    def table(self) -> type[TrainingJob]:
        return TrainingJob

    def base(self) -> Select[TrainingJob]:
        # A summary needs the request (whether it asked for a warm pool), not the transitions.
        return select(TrainingJob).options(
            load_only(
                TrainingJob.name,
                TrainingJob.request,
                TrainingJob.arn,
                TrainingJob.status,
                TrainingJob.secondary_status,
                TrainingJob.creation_time,
                TrainingJob.last_modified_time,
                TrainingJob.training_end_time,
            )
        )

    def where(self, query: Select[TrainingJob]) -> Select[TrainingJob]:
        if self.warm_pool_status == "Terminated":
            return query.where(
                TrainingJob.status.in_(state.TERMINAL), keep_alive.as_integer().is_not(None)
            )
        if self.warm_pool_status:
            return query.where(false())
        return query
