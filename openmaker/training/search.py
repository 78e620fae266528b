"""Search (resource TrainingJob): a SearchExpression over the jobs' records, sorted, in pages.

A record is a job in the `TrainingJob` shape with its tags. Filter names are property paths:
`TrainingJobName`, `ResourceConfig.InstanceType`, `Tags.<key>`, `HyperParameters.<name>`,
`Metrics.<name>` (the last value of a MetricDefinitions metric), a list member matching when
any element does (`InputDataConfig.ChannelName`). Values are strings, read as the property's
type: times as ISO 8601 or epoch seconds, numbers, `true`/`false`.

Every record is built and filtered here, in Python: a machine holds few enough jobs for that,
and SearchExpression's nesting has no plain SQL form. Pages are cut after the last record's
sort key and name (a keyset), like ListTrainingJobs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from openmaker.jobs.db import MetricValue, Tag, TrainingJob
from openmaker.shapes.errors import ValidationException
from openmaker.shapes.paging import paginator
from openmaker.training.describe import search_record
from openmaker.training.kind import TRAINING

RESOURCE = TRAINING.name
DEFAULT_SORT = "LastModifiedTime"
# Properties that are maps in the record: the rest of the name after them is one key, dots
# and all (`HyperParameters.sagemaker_program`, `Metrics.validation:accuracy`).
_MAPS = ("Tags", "HyperParameters", "Environment", "Metrics")
_NEEDS_NO_VALUE = {"Exists", "NotExists"}
SortKey = tuple[int, float, str, str]
PAGES = paginator("Search")


@dataclass(frozen=True)
class SearchQuery:
    expression: dict[str, Any] | None = None
    sort_by: str = DEFAULT_SORT
    descending: bool = True
    limit: int = 10
    token: str | None = None

    @classmethod
    def of(cls, params: dict[str, Any]) -> SearchQuery:
        return cls(
            expression=params.get("SearchExpression"),
            sort_by=params.get("SortBy") or DEFAULT_SORT,
            descending=params.get("SortOrder", "Descending") == "Descending",
            limit=PAGES.limit(params, 10),
            token=PAGES.token(params),
        )


def search(sessions: sessionmaker[Session], params: dict[str, Any]) -> dict[str, Any]:
    """Search's response for `params` (already checked against the input shape)."""
    query = SearchQuery.of(params)
    if query.expression:
        check_expression(query.expression)
    after = _token_key(query) if query.token else None
    if params["Resource"] != RESOURCE:
        # openmaker keeps training jobs only: no record of any other kind exists.
        return {"Results": [], "TotalHits": {"Value": 0, "Relation": "EqualTo"}}
    records = [r for r in load_records(sessions) if _matches(query.expression, _view(r))]
    keyed = sorted(
        ((sort_key(_view(r), query.sort_by), r) for r in records),
        key=lambda pair: pair[0],
        reverse=query.descending,
    )
    if after is not None:
        keyed = [(k, r) for k, r in keyed if (k < after if query.descending else k > after)]
    page = keyed[: query.limit]
    result: dict[str, Any] = {
        "Results": [{"TrainingJob": record} for _, record in page],
        "TotalHits": {"Value": len(records), "Relation": "EqualTo"},
    }
    following = {"k": list(page[-1][0])} if len(keyed) > query.limit else None
    return PAGES.next_page(result, following, by=query.sort_by, desc=query.descending)


def load_records(sessions: sessionmaker[Session]) -> list[dict[str, Any]]:
    """Every job as a Search record: Describe's members, tags and final metric values."""
    last = select(func.max(MetricValue.id)).group_by(MetricValue.job_name, MetricValue.name)
    with sessions() as session:
        jobs = list(session.scalars(select(TrainingJob)))
        tags: dict[str, list[dict[str, str]]] = {}
        for tag in session.scalars(select(Tag).order_by(Tag.key)):
            tags.setdefault(tag.resource_arn, []).append({"Key": tag.key, "Value": tag.value})
        metrics: dict[str, list[dict[str, Any]]] = {}
        query = select(MetricValue).where(MetricValue.id.in_(last)).order_by(MetricValue.name)
        for m in session.scalars(query):
            metrics.setdefault(m.job_name, []).append(
                {
                    "MetricName": m.name,
                    "Value": m.value,
                    "Timestamp": datetime.fromtimestamp(m.timestamp / 1000, UTC),
                }
            )
    records = []
    for job in jobs:
        record = search_record(job, tags.get(job.arn, []))
        if job.name in metrics:
            record["FinalMetricDataList"] = metrics[job.name]
        records.append(record)
    return records


def check_expression(expression: dict[str, Any]) -> None:
    """What the input shape cannot say: a Value where the operator needs one, one Contains."""
    contains = 0
    for item in _filters(expression):
        operator = item.get("Operator", "Equals")
        contains += operator == "Contains"
        if operator not in _NEEDS_NO_VALUE and item.get("Value") is None:
            raise ValidationException(
                f"SearchExpression: the filter on {item['Name']!r} with operator {operator} "
                "needs a Value"
            )
    if contains > 1:
        raise ValidationException(
            "SearchExpression: a search expression can include only one Contains operator"
        )


def _filters(expression: dict[str, Any]) -> Iterable[dict[str, Any]]:
    yield from expression.get("Filters") or []
    for nested in expression.get("NestedFilters") or []:
        yield from nested["Filters"]
    for sub in expression.get("SubExpressions") or []:
        yield from _filters(sub)


def _view(record: dict[str, Any]) -> dict[str, Any]:
    """The record as filters see it: tags and final metrics as maps by name."""
    view = dict(record)
    view["Tags"] = {t["Key"]: t["Value"] for t in record.get("Tags") or []}
    view["Metrics"] = {m["MetricName"]: m["Value"] for m in record.get("FinalMetricDataList", [])}
    return view


def _matches(expression: dict[str, Any] | None, view: dict[str, Any]) -> bool:
    if not expression:
        return True
    outcomes = [_filter_matches(f, view) for f in expression.get("Filters") or []]
    outcomes += [_nested_matches(n, view) for n in expression.get("NestedFilters") or []]
    outcomes += [_matches(s, view) for s in expression.get("SubExpressions") or []]
    if expression.get("Operator", "And") == "Or":
        return any(outcomes)
    return all(outcomes)


def _nested_matches(nested: dict[str, Any], view: dict[str, Any]) -> bool:
    """Every filter holds for one and the same element of the list property."""
    name = nested["NestedPropertyName"]
    for element in _resolve(view, name):
        scope = {name: element}
        if all(_filter_matches(f, scope) for f in nested["Filters"]):
            return True
    return False


def _filter_matches(item: dict[str, Any], view: dict[str, Any]) -> bool:
    name, operator = item["Name"], item.get("Operator", "Equals")
    values = _resolve(view, name)
    if operator == "Exists":
        return bool(values)
    if operator == "NotExists":
        return not values
    text = str(item["Value"])
    if operator == "NotEquals":
        return bool(values) and not any(_compare(v, "Equals", text, name) for v in values)
    return any(_compare(v, operator, text, name) for v in values)


def _compare(actual: Any, operator: str, text: str, name: str) -> bool:
    if operator == "Contains":
        return isinstance(actual, str) and text.lower() in actual.lower()
    if operator == "In":
        return isinstance(actual, str) and actual in [v.strip() for v in text.split(",")]
    wanted = _as_type_of(actual, text, name)
    if wanted is None:
        return False
    if operator == "Equals":
        return bool(actual == wanted)
    if operator == "GreaterThan":
        return bool(actual > wanted)
    if operator == "GreaterThanOrEqualTo":
        return bool(actual >= wanted)
    if operator == "LessThan":
        return bool(actual < wanted)
    return bool(actual <= wanted)  # LessThanOrEqualTo, the last one left


def _as_type_of(actual: Any, text: str, name: str) -> Any:
    """The filter's Value read as the property's type; None where they cannot compare."""
    try:
        if isinstance(actual, bool):
            if text.lower() not in ("true", "false"):
                raise ValueError(text)
            return text.lower() == "true"
        if isinstance(actual, datetime):
            return parse_time(text)
        if isinstance(actual, int | float):
            return float(text)
    except ValueError:
        raise ValidationException(
            f"SearchExpression: {text!r} is not a value property {name} can be compared with"
        ) from None
    return text if isinstance(actual, str) else None


def parse_time(text: str) -> datetime:
    """ISO 8601 (a missing zone is UTC) or seconds since the epoch."""
    try:
        return datetime.fromtimestamp(float(text), UTC)
    except ValueError:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _resolve(value: Any, name: str) -> list[Any]:
    """The values at property path `name`: several when it passes through a list."""
    parts = name.split(".")
    found: list[Any] = []
    _walk(value, parts, found, top=True)
    return found


def _walk(value: Any, parts: list[str], found: list[Any], top: bool = False) -> None:
    if isinstance(value, list):
        for element in value:
            _walk(element, parts, found)
        return
    if not parts:
        if value is not None:
            found.append(value)
        return
    if not isinstance(value, dict):
        return
    head = parts[0]
    if top and head in _MAPS and len(parts) > 1:
        inner = value.get(head) or {}
        key = ".".join(parts[1:])
        if key in inner:
            found.append(inner[key])
        return
    if head in value:
        _walk(value[head], parts[1:], found)


def sort_key(view: dict[str, Any], by: str) -> SortKey:
    """Orders records by property `by`, then name; records without it come first."""
    values = _resolve(view, by)
    name = str(view["TrainingJobName"])
    if not values:
        return (0, 0.0, "", name)
    value = values[0]
    if isinstance(value, datetime):
        return (1, value.timestamp(), "", name)
    if isinstance(value, int | float):  # bool included
        return (1, float(value), "", name)
    return (2, 0.0, str(value), name)


def _token_key(query: SearchQuery) -> SortKey:
    assert query.token is not None
    position = PAGES.position(query.token, by=query.sort_by, desc=query.descending)
    try:
        assert position is not None
        kind, number, text, name = position["k"]
        return (int(kind), float(number), str(text), str(name))
    except (ValueError, KeyError, TypeError):
        raise PAGES.invalid(query.token) from None
