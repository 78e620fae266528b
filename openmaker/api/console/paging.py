"""A console table's page request (status filter, sort, size, token), checked once for every
table: training jobs, the other kinds' jobs, endpoints."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from openmaker.shapes.errors import ValidationException

MAX_PAGE = 100


def check_page(
    status: str | None, statuses: Sequence[str], sort: str, sorts: Collection[str], limit: int
) -> None:
    """A ValidationException naming what the table does not take."""
    if status and status not in statuses:
        raise ValidationException(f"status must be one of {list(statuses)}")
    if sort not in sorts:
        raise ValidationException(f"sort must be one of {sorted(sorts)}")
    if not 1 <= limit <= MAX_PAGE:
        raise ValidationException(f"limit must be between 1 and {MAX_PAGE}")


def list_params(
    name: str | None, status: str | None, sort: str, descending: bool, limit: int,
    token: str | None,
) -> dict[str, Any]:  # fmt: skip
    """The page as a SageMaker List* request's members."""
    params: dict[str, Any] = {
        "SortBy": sort,
        "SortOrder": "Descending" if descending else "Ascending",
        "MaxResults": limit,
    }
    for member, value in (("NameContains", name), ("StatusEquals", status), ("NextToken", token)):
        if value:
            params[member] = value
    return params
