"""Job logs read the CloudWatch Logs way: DescribeLogStreams, GetLogEvents, FilterLogEvents.

Events keep the order they were written in (their row id); tokens name a row id, so that a
client polling with `nextForwardToken` sees every line exactly once, however fast lines come.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, func, select, tuple_
from sqlalchemy.orm import Session, sessionmaker

from openmaker.jobs.db import LogEvent, LogStream
from openmaker.jobs.logs import LOG_GROUP
from openmaker.spec.errors import InvalidParameter, LogsResourceNotFound

# GetLogEvents and FilterLogEvents answer at most 1 MB; CloudWatch counts 26 bytes per event.
RESPONSE_BYTES = 1_048_576
EVENT_OVERHEAD = 26
GROUPS = (LOG_GROUP,)


@dataclass(frozen=True)
class Window:
    """The time range a request asks for, in epoch milliseconds; `end` is exclusive."""

    start: int | None = None
    end: int | None = None

    def apply(self, query: Select[Any]) -> Select[Any]:
        if self.start is not None:
            query = query.where(LogEvent.timestamp >= self.start)
        if self.end is not None:
            query = query.where(LogEvent.timestamp < self.end)
        return query


class LogQueries:
    def __init__(self, sessions: sessionmaker[Session], region: str, account: str) -> None:
        self.sessions, self.region, self.account = sessions, region, account

    def describe_log_streams(
        self,
        group: str,
        prefix: str | None = None,
        order_by: str = "LogStreamName",
        descending: bool = False,
        limit: int = 50,
        token: str | None = None,
    ) -> dict[str, Any]:
        self._check_group(group)
        if prefix and order_by == "LastEventTime":
            raise InvalidParameter(
                "Cannot order by LastEventTime with a logStreamNamePrefix."
            )
        stats = (
            select(
                LogEvent.stream.label("stream"),
                func.min(LogEvent.timestamp).label("first"),
                func.max(LogEvent.timestamp).label("last"),
                func.max(LogEvent.ingestion_time).label("ingested"),
                func.sum(func.length(LogEvent.message)).label("bytes"),
            )
            .group_by(LogEvent.stream)
            .subquery()
        )
        query = (
            select(LogStream, stats.c.first, stats.c.last, stats.c.ingested, stats.c.bytes)
            .outerjoin(stats, stats.c.stream == LogStream.name)
            .where(LogStream.group == group)
        )
        if prefix:
            query = query.where(LogStream.name.startswith(prefix, autoescape=True))
        key = LogStream.name if order_by == "LogStreamName" else func.coalesce(stats.c.last, 0)
        query = query.order_by(key.desc() if descending else key, LogStream.name)
        offset = _offset_token(token)
        with self.sessions() as session:
            rows = session.execute(query.offset(offset).limit(limit + 1)).all()
        streams = [self._stream(row) for row in rows[:limit]]
        result: dict[str, Any] = {"logStreams": streams}
        if len(rows) > limit:
            result["nextToken"] = f"o/{offset + limit}"
        return result

    def get_log_events(
        self,
        group: str,
        stream: str,
        window: Window,
        limit: int = 10000,
        token: str | None = None,
        from_head: bool = False,
    ) -> dict[str, Any]:
        self._check_group(group)
        with self.sessions() as session:
            if session.get(LogStream, stream) is None:
                raise LogsResourceNotFound("The specified log stream does not exist.")
        query = window.apply(select(LogEvent).where(LogEvent.stream == stream))
        forward = from_head
        if token:
            direction, boundary = _row_token(token)
            forward = direction == "f"
            query = query.where(LogEvent.id > boundary if forward else LogEvent.id < boundary)
        query = query.order_by(LogEvent.id if forward else LogEvent.id.desc()).limit(limit)
        with self.sessions() as session:
            rows, _ = _capped(session.scalars(query), limit)
        if not forward:
            rows.reverse()
        events = [
            {"timestamp": e.timestamp, "message": e.message, "ingestionTime": e.ingestion_time}
            for e in rows
        ]
        if rows:
            after, before = rows[-1].id, rows[0].id
        else:
            # At either end the same token comes back: a poller knows it has seen everything.
            edge = _row_token(token)[1] if token else 0
            after = before = edge
        return {
            "events": events,
            "nextForwardToken": f"f/{after:020d}",
            "nextBackwardToken": f"b/{before:020d}",
        }

    def filter_log_events(
        self,
        group: str,
        streams: list[str] | None,
        prefix: str | None,
        window: Window,
        pattern: str | None = None,
        limit: int = 10000,
        token: str | None = None,
    ) -> dict[str, Any]:
        self._check_group(group)
        if streams and prefix:
            raise InvalidParameter(
                "logStreamNames and logStreamNamePrefix are mutually exclusive."
            )
        match = _pattern(pattern)
        query = window.apply(
            select(LogEvent).join(LogStream, LogStream.name == LogEvent.stream)
        ).where(LogStream.group == group)
        if streams:
            query = query.where(LogEvent.stream.in_(streams))
        if prefix:
            query = query.where(LogEvent.stream.startswith(prefix, autoescape=True))
        if token:
            stamp, row = _filter_token(token)
            query = query.where(tuple_(LogEvent.timestamp, LogEvent.id) > tuple_(stamp, row))
        query = query.order_by(LogEvent.timestamp, LogEvent.id)
        with self.sessions() as session:
            events = session.scalars(query.execution_options(yield_per=1000))
            found, more = _capped((e for e in events if match(e.message)), limit)
        result: dict[str, Any] = {
            "events": [
                {
                    "logStreamName": e.stream,
                    "timestamp": e.timestamp,
                    "message": e.message,
                    "ingestionTime": e.ingestion_time,
                    "eventId": str(e.id),
                }
                for e in found
            ],
            "searchedLogStreams": [],
        }
        if more:
            result["nextToken"] = f"{found[-1].timestamp}/{found[-1].id}"
        return result

    def _check_group(self, group: str) -> None:
        if group not in GROUPS:
            raise LogsResourceNotFound("The specified log group does not exist.")

    def _stream(self, row: Any) -> dict[str, Any]:
        stream: LogStream = row[0]
        item: dict[str, Any] = {
            "logStreamName": stream.name,
            "creationTime": stream.creation_time,
            "arn": (
                f"arn:aws:logs:{self.region}:{self.account}:"
                f"log-group:{stream.group}:log-stream:{stream.name}"
            ),
            "storedBytes": 0,
        }
        if row.first is not None:
            item["firstEventTimestamp"] = row.first
            item["lastEventTimestamp"] = row.last
            item["lastIngestionTime"] = row.ingested
        return item


def _capped(events: Iterable[LogEvent], limit: int) -> tuple[list[LogEvent], bool]:
    """The first `limit` events that fit in a response (about 1 MB, as CloudWatch counts), and
    whether any event was left out."""
    rows: list[LogEvent] = []
    size = 0
    for event in events:
        size += len(event.message.encode()) + EVENT_OVERHEAD
        if len(rows) >= limit or (rows and size > RESPONSE_BYTES):
            return rows, True
        rows.append(event)
    return rows, False


def _row_token(token: str) -> tuple[str, int]:
    direction, _, number = token.partition("/")
    if direction not in ("f", "b") or not number.isdigit():
        raise InvalidParameter(f"The specified nextToken is invalid: {token!r}")
    return direction, int(number)


def _filter_token(token: str) -> tuple[int, int]:
    stamp, _, row = token.partition("/")
    if not (stamp.lstrip("-").isdigit() and row.isdigit()):
        raise InvalidParameter(f"The specified nextToken is invalid: {token!r}")
    return int(stamp), int(row)


def _offset_token(token: str | None) -> int:
    if not token:
        return 0
    kind, _, number = token.partition("/")
    if kind != "o" or not number.isdigit():
        raise InvalidParameter(f"The specified nextToken is invalid: {token!r}")
    return int(number)


def _pattern(pattern: str | None) -> Any:
    """CloudWatch's unstructured filter patterns: every term must appear, `"quoted phrases"`
    as a whole, `?term` where any one of them will do, `-term` must not appear. An empty pattern
    matches everything."""
    if not pattern or not pattern.strip():
        return lambda _message: True
    try:
        terms = shlex.split(pattern)
    except ValueError:
        raise InvalidParameter(f"Invalid filter pattern: {pattern!r}") from None
    required = [t for t in terms if not t.startswith(("?", "-")) or len(t) == 1]
    optional = [t[1:] for t in terms if t.startswith("?") and len(t) > 1]
    excluded = [t[1:] for t in terms if t.startswith("-") and len(t) > 1]

    def match(message: str) -> bool:
        return (
            all(t in message for t in required)
            and (not optional or any(t in message for t in optional))
            and not any(t in message for t in excluded)
        )

    return match
