"""ListModels, ListEndpointConfigs and ListEndpoints: filters, sort order and pages, alike.

These lists are short (a machine holds few models), so a page is cut from the rows that match;
a token holds the offset of the next page and the query it belongs to (shapes/paging.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from openmaker.serving.clock import as_utc
from openmaker.shapes.paging import paginator, whole_number

LARGEST_OFFSET = 2**31


class Listed(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def creation_time(self) -> Any: ...


def page(
    operation: str,
    params: dict[str, Any],
    rows: Sequence[Any],
    summary: Callable[[Any], dict[str, Any]],
    member: str,
) -> dict[str, Any]:
    """One page of `rows` (every row of the resource) as `operation` answers it."""
    pages = paginator(operation)
    name_contains = params.get("NameContains")
    chosen = [
        row
        for row in rows
        if (not name_contains or name_contains.lower() in row.name.lower())
        and _within(as_utc(row.creation_time), params, "CreationTime")
        and (
            not hasattr(row, "last_modified_time")
            or _within(as_utc(row.last_modified_time), params, "LastModifiedTime")
        )
        and (not params.get("StatusEquals") or row.status == params["StatusEquals"])
    ]
    sort_by = params.get("SortBy", "CreationTime")
    descending = params.get("SortOrder", "Descending") == "Descending"
    chosen.sort(
        key=lambda row: (row.name,) if sort_by == "Name" else (as_utc(row.creation_time), row.name),
        reverse=descending,
    )
    query = {"filters": _filters(params), "sort": [sort_by, descending]}
    token = pages.token(params)
    position = pages.position(token, **query)
    offset = 0
    if token and position is not None:
        offset = whole_number(position, "offset", LARGEST_OFFSET, pages.invalid(token))
    limit = pages.limit(params, 10)
    shown = chosen[offset : offset + limit]
    following = {"offset": offset + limit} if offset + limit < len(chosen) else None
    return pages.next_page({member: [summary(row) for row in shown]}, following, **query)


def _within(moment: Any, params: dict[str, Any], member: str) -> bool:
    after, before = params.get(f"{member}After"), params.get(f"{member}Before")
    return (after is None or moment > as_utc(after)) and (before is None or moment < as_utc(before))


def _filters(params: dict[str, Any]) -> list[str]:
    """The query's filters, as a token keeps them (a token is refused for another query)."""
    names = (
        "NameContains",
        "StatusEquals",
        "CreationTimeAfter",
        "CreationTimeBefore",
        "LastModifiedTimeAfter",
        "LastModifiedTimeBefore",
    )
    return [f"{name}={params[name]}" for name in names if params.get(name) is not None]
