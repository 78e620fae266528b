"""ListTrainingJobs: filters, sorting and NextToken pagination over the stored jobs.

Pages are cut by the sort key and the name (a keyset), not by an offset: jobs created while a
client pages through never make it see a job twice or skip one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, false, select, tuple_
from sqlalchemy.orm import load_only

from openmaker.jobs.db import TrainingJob
from openmaker.shapes.paging import paginator
from openmaker.training import state
from openmaker.training.state import as_utc

SORT_COLUMNS = {
    "CreationTime": TrainingJob.creation_time,
    "Name": TrainingJob.name,
    "Status": TrainingJob.status,
}


PAGES = paginator("ListTrainingJobs")

keep_alive = TrainingJob.request[("ResourceConfig", "KeepAlivePeriodInSeconds")]


@dataclass(frozen=True)
class JobQuery:
    status: str | None = None
    name_contains: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    modified_after: datetime | None = None
    modified_before: datetime | None = None
    # openmaker keeps no warm pool: one asked for is Terminated when its job ends
    # (openmaker/training/describe.py), and no pool is ever in any other status.
    warm_pool_status: str | None = None
    sort_by: str = "CreationTime"
    descending: bool = False
    limit: int = 10
    token: str | None = None

    def select(self) -> Select[TrainingJob]:
        # A summary needs the request (whether it asked for a warm pool), not the transitions.
        query = select(TrainingJob).options(
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
        if self.status:
            query = query.where(TrainingJob.status == self.status)
        if self.name_contains:
            query = query.where(TrainingJob.name.icontains(self.name_contains, autoescape=True))
        if self.created_after:
            query = query.where(TrainingJob.creation_time > _naive(self.created_after))
        if self.created_before:
            query = query.where(TrainingJob.creation_time < _naive(self.created_before))
        if self.modified_after:
            query = query.where(TrainingJob.last_modified_time > _naive(self.modified_after))
        if self.modified_before:
            query = query.where(TrainingJob.last_modified_time < _naive(self.modified_before))
        if self.warm_pool_status == "Terminated":
            query = query.where(
                TrainingJob.status.in_(state.TERMINAL), keep_alive.as_integer().is_not(None)
            )
        elif self.warm_pool_status:
            query = query.where(false())
        column = SORT_COLUMNS[self.sort_by]
        key = tuple_(column, TrainingJob.name)
        if self.token:
            after = tuple_(*self._token_key())
            query = query.where(key < after if self.descending else key > after)
        if self.descending:
            query = query.order_by(column.desc(), TrainingJob.name.desc())
        else:
            query = query.order_by(column, TrainingJob.name)
        # One more than a page: whether a next page exists.
        return query.limit(self.limit + 1)

    def token_after(self, job: TrainingJob) -> str:
        value: Any = getattr(job, SORT_COLUMNS[self.sort_by].key)
        if isinstance(value, datetime):
            value = as_utc(value).isoformat()
        result = PAGES.next_page({}, {"v": value, "n": job.name}, by=self.sort_by)
        return str(result[PAGES.output_token])

    def _token_key(self) -> tuple[Any, str]:
        assert self.token is not None
        position = PAGES.position(self.token, by=self.sort_by)
        try:
            assert position is not None
            value = position["v"]
            if self.sort_by == "CreationTime":
                value = _naive(datetime.fromisoformat(value))
            return value, str(position["n"])
        except (ValueError, KeyError, TypeError):
            raise PAGES.invalid(self.token) from None


def _naive(value: datetime) -> datetime:
    """Stored times are UTC without a zone (SQLite keeps none); compare like with like."""
    return as_utc(value).replace(tzinfo=None)
