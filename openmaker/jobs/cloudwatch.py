"""Job logs read the CloudWatch Logs way: DescribeLogStreams, GetLogEvents, FilterLogEvents.

Events keep the order they were written in (their row id); tokens name a row id, so that a
client polling with `nextForwardToken` sees every line exactly once, however fast lines come.
Tokens are made and read by openmaker/shapes/paging.py, as every operation's are.
FilterLogEvents examines a bounded number of events per call, as CloudWatch does: a search
through a large stream takes several calls, each quick, some with no events but a `nextToken`.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeVarTuple

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, sessionmaker

from openmaker.jobs.db import LogEvent, LogStream, sessions
from openmaker.jobs.logs import EVENT_OVERHEAD
from openmaker.settings import Settings
from openmaker.shapes.errors import InvalidParameter, LogsResourceNotFound
from openmaker.shapes.paging import decode, encode, invalid_token, paginator, whole_number

# GetLogEvents and FilterLogEvents answer at most 1 MB, counting EVENT_OVERHEAD per event.
RESPONSE_BYTES = 1_048_576
# One log group per kind of resource.
# What one FilterLogEvents call examines at most: events, and bytes of their messages.
SCAN_EVENTS = 100_000
SCAN_BYTES = 16 * 1024 * 1024
# Events read per query while scanning (a query reads at most this many rows).
SCAN_STEP = 5_000
# Tokens name row ids, which SQLite keeps in 64 bits.
LARGEST_ID = 2**63 - 1

# The columns a query selects, kept through `Window.apply`.
Columns = TypeVarTuple("Columns")


@dataclass(frozen=True)
class Window:
    """The time range a request asks for, in epoch milliseconds; `end` is exclusive."""

    start: int | None = None
    end: int | None = None

    def apply(self, query: Select[*Columns]) -> Select[*Columns]:
        if self.start is not None:
            query = query.where(LogEvent.timestamp >= self.start)
        if self.end is not None:
            query = query.where(LogEvent.timestamp < self.end)
        return query


class LogQueries:
    def __init__(
        self, sessions: sessionmaker[Session], region: str, account: str, groups: tuple[str, ...]
    ) -> None:
        """Queries of the log groups `groups` (those of the kinds of job there are)."""
        self.sessions, self.region, self.account = sessions, region, account
        self.groups = groups

    @classmethod
    def of(cls, settings: Settings, groups: tuple[str, ...]) -> LogQueries:
        """Queries of the logs kept in the database of `settings`."""
        return cls(sessions(settings), settings.region, settings.account_id, groups)

    def group_names(self, prefix: str = "") -> list[str]:
        """The log groups that hold streams, in name order: as on AWS, a group exists once
        something is written to it (an endpoint's own group among them)."""
        with self.sessions() as session:
            query = select(LogStream.group).distinct().where(LogStream.group.startswith(prefix))
            return sorted(session.scalars(query).all())

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
            raise InvalidParameter("Cannot order by LastEventTime with a logStreamNamePrefix.")
        # Each stream's first and last event by its index, not by reading all its events.
        first, last = (
            select(LogEvent.id)
            .where(LogEvent.stream_id == LogStream.id)
            .order_by(LogEvent.id.desc() if newest else LogEvent.id)
            .limit(1)
            .scalar_subquery()
            for newest in (False, True)
        )
        stats = (
            select(
                LogStream.id.label("stream"),
                first.label("first_id"),
                last.label("last_id"),
            )
            .where(LogStream.group == group)
            .subquery()
        )
        head = LogEvent.__table__.alias("head")
        tail = LogEvent.__table__.alias("tail")
        query = (
            select(
                LogStream,
                head.c.timestamp.label("first"),
                tail.c.timestamp.label("last"),
                tail.c.ingestion_time.label("ingested"),
            )
            .join(stats, stats.c.stream == LogStream.id)
            .outerjoin(head, head.c.id == stats.c.first_id)
            .outerjoin(tail, tail.c.id == stats.c.last_id)
        )
        if prefix:
            query = query.where(LogStream.name.startswith(prefix, autoescape=True))
        key = LogStream.name if order_by == "LogStreamName" else func.coalesce(tail.c.timestamp, 0)
        query = query.order_by(key.desc() if descending else key, LogStream.name)
        pages = paginator("DescribeLogStreams", "logs")
        position = pages.position(token)
        offset = 0
        if token and position is not None:
            offset = whole_number(position, "offset", LARGEST_ID, pages.invalid(token))
        with self.sessions() as session:
            rows = session.execute(query.offset(offset).limit(limit + 1)).all()
        streams = [self._stream(row) for row in rows[:limit]]
        following = {"offset": offset + limit} if len(rows) > limit else None
        return pages.next_page({"logStreams": streams}, following)

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
            found = self._stream_ids(session, group, [stream], None)
        if not found:
            raise LogsResourceNotFound("The specified log stream does not exist.")
        query = window.apply(select(LogEvent).where(LogEvent.stream_id.in_(found)))
        forward = from_head
        edge = 0
        if token:
            forward, edge = _event_token(token)
            query = query.where(LogEvent.id > edge if forward else LogEvent.id < edge)
        query = query.order_by(LogEvent.id if forward else LogEvent.id.desc()).limit(limit)
        with self.sessions() as session:
            rows, _ = _capped(session.scalars(query), limit)
        if not forward:
            rows.reverse()
        events = [
            {"timestamp": e.timestamp, "message": e.message, "ingestionTime": e.ingestion_time}
            for e in rows
        ]
        # At either end the same token comes back: a poller knows it has seen everything.
        after, before = (rows[-1].id, rows[0].id) if rows else (edge, edge)
        # GetLogEvents has no paginator in the model: its two tokens are its own.
        return {
            "events": events,
            "nextForwardToken": encode("GetLogEvents", {"after": after}),
            "nextBackwardToken": encode("GetLogEvents", {"before": before}),
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
        """Matching events in the order they were written, from the token's place on; at most
        SCAN_EVENTS events or SCAN_BYTES examined, then `nextToken` says where to go on."""
        self._check_group(group)
        if streams and prefix:
            raise InvalidParameter("logStreamNames and logStreamNamePrefix are mutually exclusive.")
        match = _pattern(pattern)
        pages = paginator("FilterLogEvents", "logs")
        position = pages.position(token)
        after = 0
        if token and position is not None:
            after = whole_number(position, "after", LARGEST_ID, pages.invalid(token))
        with self.sessions() as session:
            names = self._stream_ids(session, group, streams, prefix)
            scan = _Scan(session, list(names), window, match, limit)
            scan.run(after)
            more = _next_id(session, list(names), scan.position) is not None
        result: dict[str, Any] = {
            "events": [
                {
                    "logStreamName": names[row.stream_id],
                    "timestamp": row.timestamp,
                    "message": row.message,
                    "ingestionTime": row.ingestion_time,
                    "eventId": str(row.id),
                }
                for row in scan.found
            ],
            "searchedLogStreams": [],
        }
        return pages.next_page(result, {"after": scan.position} if more else None)

    def _stream_ids(
        self, session: Session, group: str, streams: list[str] | None, prefix: str | None
    ) -> dict[int, str]:
        """The streams searched, by id: those of `group` only (every kind of job logs in the
        same tables, and names are unique within a group only), named in `streams`, or starting
        with `prefix`, or all of them."""
        query = select(LogStream.id, LogStream.name).where(LogStream.group == group)
        if streams:
            query = query.where(LogStream.name.in_(streams))
        elif prefix:
            query = query.where(LogStream.name.startswith(prefix, autoescape=True))
        return {id: name for id, name in session.execute(query)}

    def _check_group(self, group: str) -> None:
        # A kind's group, or one below it (an endpoint's: /aws/sagemaker/Endpoints/<name>).
        if group not in self.groups and not group.startswith(tuple(f"{g}/" for g in self.groups)):
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


class _Scan:
    """One FilterLogEvents call's walk through the events after a row id, within its budget."""

    def __init__(
        self,
        session: Session,
        streams: list[int] | None,
        window: Window,
        match: Any,
        limit: int,
    ) -> None:
        self.session, self.streams, self.window, self.match = session, streams, window, match
        self.connection = session.connection()
        self.limit = limit
        self.found: list[Any] = []
        self.size = 0  # of the response, as CloudWatch counts it
        self.position = 0  # every event up to this row id is examined

    def run(self, after: int) -> None:
        self.position = after
        examined = scanned = 0
        while examined < SCAN_EVENTS and scanned < SCAN_BYTES:
            start = _next_id(self.session, self.streams, self.position)
            if start is None:
                return
            end = min(start + min(SCAN_STEP, SCAN_EVENTS - examined) - 1, LARGEST_ID)
            query = self.window.apply(
                select(
                    LogEvent.id,
                    LogEvent.stream_id,
                    LogEvent.timestamp,
                    LogEvent.ingestion_time,
                    LogEvent.message,
                ).where(LogEvent.id.between(start, end))
            )
            if self.streams is not None:
                query = query.where(LogEvent.stream_id.in_(self.streams))
            # Core rows, not ORM ones: most of the time of a scan went into building those.
            rows = self.connection.execute(
                query.order_by(LogEvent.id).execution_options(yield_per=1000)
            )
            match = self.match
            for row in rows:
                message = row[4]
                scanned += len(message)
                if match(message) and not self._add(row):
                    self.position = row[0] - 1  # the next call begins with this event
                    return
                self.position = row[0]
                if scanned >= SCAN_BYTES:
                    return
            self.position = end
            examined += end - start + 1

    def _add(self, row: Any) -> bool:
        """Add a match to the response, or say that the response is full."""
        size = len(row[4].encode()) + EVENT_OVERHEAD
        if len(self.found) >= self.limit or (self.found and self.size + size > RESPONSE_BYTES):
            return False
        self.found.append(row)
        self.size += size
        return True


def _next_id(session: Session, streams: list[int] | None, after: int) -> int | None:
    """The first row id after `after` in these streams (by id; all when None), found by
    index."""
    if streams is None:
        return session.scalar(select(func.min(LogEvent.id)).where(LogEvent.id > after))
    first = (
        select(LogEvent.id)
        .where(LogEvent.stream_id == LogStream.id, LogEvent.id > after)
        .order_by(LogEvent.id)
        .limit(1)
        .scalar_subquery()
    )
    return session.scalar(select(func.min(first)).where(LogStream.id.in_(streams)))


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


def _event_token(token: str) -> tuple[bool, int]:
    """GetLogEvents' token: (forward, the row id it pages from)."""
    invalid = invalid_token("logs", "nextToken", token)
    position = decode("GetLogEvents", token, invalid)
    if set(position) == {"after"}:
        return True, whole_number(position, "after", LARGEST_ID, invalid)
    if set(position) == {"before"}:
        return False, whole_number(position, "before", LARGEST_ID, invalid)
    raise invalid


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

    if len(required) == 1 and not optional and not excluded:
        [term] = required
        return lambda message: term in message  # the common case, at its quickest

    def match(message: str) -> bool:
        return (
            all(t in message for t in required)
            and (not optional or any(t in message for t in optional))
            and not any(t in message for t in excluded)
        )

    return match
