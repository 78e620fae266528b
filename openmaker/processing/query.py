"""ListProcessingJobs: filters, sorting and NextToken pagination over the stored jobs, cut by
the sort key and the name (a keyset): jobs created while a client pages never make it see one
twice or skip one."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, select, tuple_

from openmaker.jobs.db import ProcessingJobRecord
from openmaker.shapes.paging import paginator

Job = ProcessingJobRecord
SORT_COLUMNS = {"CreationTime": Job.creation_time, "Name": Job.name, "Status": Job.status}
PAGES = paginator("ListProcessingJobs")


@dataclass(frozen=True)
class ProcessingQuery:
    status: str | None = None
    name_contains: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    modified_after: datetime | None = None
    modified_before: datetime | None = None
    sort_by: str = "CreationTime"
    descending: bool = False
    limit: int = 10
    token: str | None = None

    @classmethod
    def of(cls, params: dict[str, Any]) -> ProcessingQuery:
        """The query of a ListProcessingJobs request."""
        return cls(
            status=params.get("StatusEquals"),
            name_contains=params.get("NameContains"),
            created_after=params.get("CreationTimeAfter"),
            created_before=params.get("CreationTimeBefore"),
            modified_after=params.get("LastModifiedTimeAfter"),
            modified_before=params.get("LastModifiedTimeBefore"),
            sort_by=params.get("SortBy", "CreationTime"),
            descending=params.get("SortOrder", "Ascending") == "Descending",
            limit=PAGES.limit(params, 10),
            token=PAGES.token(params),
        )

    def select(self) -> Select[Job]:
        query = select(Job)
        if self.status:
            query = query.where(Job.status == self.status)
        if self.name_contains:
            query = query.where(Job.name.icontains(self.name_contains, autoescape=True))
        bounds: tuple[tuple[datetime | None, Any, bool], ...] = (
            (self.created_after, Job.creation_time, True),
            (self.created_before, Job.creation_time, False),
            (self.modified_after, Job.last_modified_time, True),
            (self.modified_before, Job.last_modified_time, False),
        )
        for moment, column, after in bounds:
            if moment is not None:
                query = query.where(column > _naive(moment) if after else column < _naive(moment))
        order = SORT_COLUMNS[self.sort_by]
        key = tuple_(order, Job.name)
        if self.token:
            start = tuple_(*self._token_key())
            query = query.where(key < start if self.descending else key > start)
        if self.descending:
            query = query.order_by(order.desc(), Job.name.desc())
        else:
            query = query.order_by(order, Job.name)
        return query.limit(self.limit + 1)  # one more: whether a next page exists

    def token_after(self, job: Job) -> str:
        value: Any = getattr(job, SORT_COLUMNS[self.sort_by].key)
        if isinstance(value, datetime):
            value = _naive(value).isoformat()
        result = PAGES.next_page({}, {"v": value, "n": job.name}, by=self.sort_by)
        return str(result[PAGES.output_token])

    def _token_key(self) -> tuple[Any, str]:
        assert self.token is not None
        position = PAGES.position(self.token, by=self.sort_by)
        try:
            assert position is not None
            value = position["v"]
            if self.sort_by == "CreationTime":
                value = datetime.fromisoformat(value)
            return value, str(position["n"])
        except (ValueError, KeyError, TypeError, AssertionError):
            raise PAGES.invalid(self.token) from None


def _naive(value: datetime) -> datetime:
    """Stored times are UTC without a zone (SQLite keeps none); compare like with like."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None)
