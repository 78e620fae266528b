"""List*Jobs for every kind of job: filters, sorting and NextToken pagination over the stored
jobs.

Pages are cut by the sort key and the name (a keyset), not by an offset: jobs created while a
client pages through never make it see a job twice or skip one. A kind's query names its table
and paginator, and may add filters of its own (`where`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Self, TypeVar

from sqlalchemy import Select, select, tuple_

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from openmaker.jobs.db import JobRecord
    from openmaker.shapes.paging import Paginator

Job = TypeVar("Job", bound="JobRecord")

# SortBy: the attribute of a job's row each sorts by.
SORT_KEYS = {"CreationTime": "creation_time", "Name": "name", "Status": "status"}


def sort_columns(table: type[JobRecord]) -> dict[str, Any]:
    """SortBy: the column of `table` each sorts by."""
    return {by: getattr(table, attribute) for by, attribute in SORT_KEYS.items()}


@dataclass(frozen=True)
class JobListQuery(Generic[Job]):
    """The filters, order and page of a List*Jobs request, for the kind whose table `table`
    gives and whose paginator is `pages`."""

    pages: ClassVar[Paginator]
    default_order: ClassVar[str] = "Ascending"  # SortOrder when the request names none

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
    def of(cls, params: dict[str, Any], **more: Any) -> Self:
        """The query of a List*Jobs request (`more`: the kind's own members)."""
        pages = cls.pages
        return cls(
            status=params.get("StatusEquals"),
            name_contains=params.get("NameContains"),
            created_after=params.get("CreationTimeAfter"),
            created_before=params.get("CreationTimeBefore"),
            modified_after=params.get("LastModifiedTimeAfter"),
            modified_before=params.get("LastModifiedTimeBefore"),
            sort_by=params.get("SortBy", "CreationTime"),
            descending=params.get("SortOrder", cls.default_order) == "Descending",
            limit=pages.limit(params, 10),
            token=pages.token(params),
            **more,
        )

    def table(self) -> type[Job]:
        raise NotImplementedError

    def base(self) -> Select[Job]:
        """All the kind's jobs, before filters (a kind may load fewer columns)."""
        return select(self.table())

    def where(self, query: Select[Job]) -> Select[Job]:
        """The kind's own filters."""
        return query

    def select(self) -> Select[Job]:
        table = self.table()
        query = self.where(self.base())
        if self.status:
            query = query.where(table.status == self.status)
        if self.name_contains:
            query = query.where(table.name.icontains(self.name_contains, autoescape=True))
        bounds: tuple[tuple[datetime | None, Any, bool], ...] = (
            (self.created_after, table.creation_time, True),
            (self.created_before, table.creation_time, False),
            (self.modified_after, table.last_modified_time, True),
            (self.modified_before, table.last_modified_time, False),
        )
        for moment, column, after in bounds:
            if moment is not None:
                query = query.where(column > _naive(moment) if after else column < _naive(moment))
        order = getattr(table, SORT_KEYS[self.sort_by])
        key = tuple_(order, table.name)
        if self.token:
            start = tuple_(*self._token_key())
            query = query.where(key < start if self.descending else key > start)
        if self.descending:
            query = query.order_by(order.desc(), table.name.desc())
        else:
            query = query.order_by(order, table.name)
        return query.limit(self.limit + 1)  # one more than a page: whether a next page exists

    def token_after(self, job: Job) -> str:
        value: Any = getattr(job, SORT_KEYS[self.sort_by])
        if isinstance(value, datetime):
            value = _naive(value).replace(tzinfo=UTC).isoformat()
        pages = self.pages
        result = pages.next_page({}, {"v": value, "n": job.name}, by=self.sort_by)
        return str(result[pages.output_token])

    def _token_key(self) -> tuple[Any, str]:
        assert self.token is not None
        position = self.pages.position(self.token, by=self.sort_by)
        try:
            assert position is not None
            value = position["v"]
            if self.sort_by == "CreationTime":
                value = _naive(datetime.fromisoformat(value))
            return value, str(position["n"])
        except (ValueError, KeyError, TypeError, AssertionError):
            raise self.pages.invalid(self.token) from None


def search(
    sessions: Callable[[], Session],
    query: JobListQuery[Job],
    summary: Callable[[Job], dict[str, Any]],
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of a List*Jobs: the jobs' summaries and the NextToken, if more remain."""
    with sessions() as session:
        rows = list(session.scalars(query.select()))
    page = rows[: query.limit]
    token = query.token_after(page[-1]) if len(rows) > query.limit else None
    return [summary(job) for job in page], token


def _naive(value: datetime) -> datetime:
    """Stored times are UTC without a zone (SQLite keeps none); compare like with like."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None)
