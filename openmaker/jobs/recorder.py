"""Recording what a job's hosts report as database rows, from one writer thread: its log lines,
metric values and utilization samples, and the changes to the job's row that its kind makes of
the rest (openmaker/training/recorder.py turns a training host's events into these calls).

The database layer (SQLAlchemy) is imported by the writer thread, not at start: it is most of a
worker's start-up time, and the hosts can prepare and start the code meanwhile. Their events
wait in the queue with the times they happened.

Every write takes the database's write lock, which every worker and the server's requests
share: events are written together (one transaction for what comes within `LINGER_SECONDS`),
a change to the row asked for with `update` goes in the same transaction as the events before
it, and nothing is written when there is nothing to write.

Log lines and metric values wait in a bounded backlog: a job that prints faster than the
database takes its lines is held back (its log reader waits, then its writes to the pipe), so
the worker's memory stays flat and a status change or the job's end waits behind at most one
backlog. A job stores at most `Settings.log_limit_bytes` of them (counted as CloudWatch counts
events); the rest is dropped after one line that says so.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from openmaker.jobs.logs import EVENT_OVERHEAD, stream_name
from openmaker.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from openmaker.jobs.db import JobRecord

Row = TypeVar("Row", bound="JobRecord")

# What waits for the writer, at most (the worker's memory for it is a small multiple).
BACKLOG_BYTES = 8 * 1024 * 1024
# What a line or a metric value costs beyond its text: a Python string, then a row.
ROW_COST = 64
# Rows per transaction: few commits for a flood, yet short enough that a stop request (from
# another process) gets the database's write lock within a fraction of a second.
BATCH_ROWS = 20_000
# What a stored metric value counts towards the job's log limit.
METRIC_BYTES = 16
# How long the writer waits for more events before it writes what came (an `update`, a flush
# or the end writes at once): a job's status changes come close together as it starts and
# ends, and a transaction for each held the shared write lock as often. Under load a short
# job's phases come ~0.1-0.3 s apart; a status or a line is seen this much later at most.
LINGER_SECONDS = 0.5
# ... while fewer rows than this wait: a flood's batches are written as soon as taken.
LINGER_ROWS = 100

INSERT_LINE = (
    "INSERT INTO log_events (stream_id, timestamp, ingestion_time, message) VALUES (?, ?, ?, ?)"
)
INSERT_METRIC = (
    "INSERT INTO metric_values (job_name, name, timestamp, value, host) VALUES (?, ?, ?, ?, ?)"
)
INSERT_SYSTEM_METRIC = (
    "INSERT INTO system_metric_values (job_name, host, name, timestamp, value) "
    "VALUES (?, ?, ?, ?, ?)"
)
# What earlier attempts stored (see stored_bytes): lines as CloudWatch counts their bytes.
STORED_LINES = (
    "SELECT COALESCE(SUM(LENGTH(CAST(e.message AS BLOB)) + ?), 0) FROM log_events AS e "
    'JOIN log_streams AS s ON s.id = e.stream_id WHERE s."group" = ? AND s.job_name = ?'
)
STORED_METRICS = "SELECT COALESCE(SUM(LENGTH(name) + ?), 0) FROM metric_values WHERE job_name = ?"


class JobRecorder(Generic[Row]):
    """Records one job's lines, metric values and changes as rows of the database; one writer
    thread, commits in batches, in the order they came."""

    def __init__(
        self,
        settings: Settings,
        job_name: str,
        table: Callable[[], type[Row]],
        log_group: str,
        apply: Callable[[Row, Any], None],
    ) -> None:
        """`table` gives the job's table (once the database layer is loaded); its log streams
        are in `log_group`; `apply(job, change)` makes a change given to `change`."""
        self.settings = settings
        self.sessions: sessionmaker[Session] | None = None  # set by the writer thread
        self.job_name, self.table, self.log_group, self.apply = job_name, table, log_group, apply
        self.queue: queue.Queue[_Item] = queue.Queue()
        self.backlog = _Backlog(BACKLOG_BYTES)
        self.streams: dict[str, int] = {}  # host: its stream's id
        self.limit = _LogLimit(settings.log_limit_bytes)
        self.counted = False  # whether `limit` knows what earlier attempts stored
        self.thread = threading.Thread(target=self._write, daemon=True)
        self.thread.start()

    def lines(self, host: str, timestamp_ms: int, messages: list[str], size: int) -> None:
        """Log lines of `host` (`size`: their bytes as read); waits while the backlog is full."""
        self._put(_Lines(host, timestamp_ms, messages, size + ROW_COST * len(messages)))

    def metric(self, name: str, timestamp_ms: int, value: float, host: str | None) -> None:
        self._put(_Metric(name, timestamp_ms, value, host))

    def samples(self, host: str, timestamp_ms: int, values: dict[str, float]) -> None:
        """One sample of a host's utilization, by metric name."""
        self._put(_Samples(host, timestamp_ms, values))

    def change(self, change: object) -> None:
        """A change to the job's row, made by `apply` after what came before it."""
        self._put(_Change(change))

    def _put(self, item: _Item) -> None:
        self.backlog.take(_cost(item), self.thread.is_alive)
        self.queue.put(item)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()

    def update(self, change: Callable[[Row], None]) -> Row:
        """Apply `change(job)` to the job row now, after the queued events (in their
        transaction); returns the row."""
        update = _Update(threading.Event(), change, now=True)
        self._await(update)
        if update.error is not None:
            raise update.error
        assert update.row is not None
        return cast(Row, update.row)

    def later(self, change: Callable[[Row], None]) -> None:
        """Apply `change(job)` after the queued events, with those that come within
        `LINGER_SECONDS` (one transaction), without waiting for it."""
        self._put(_Update(threading.Event(), change, now=False))

    def flush(self) -> None:
        self._await(_Flush(threading.Event()))

    def _await(self, item: _Flush) -> None:
        self.queue.put(item)
        while not item.done.wait(0.5):
            if not self.thread.is_alive():
                # Never wait forever: the worker then ends, and the job is seen as lost.
                raise RuntimeError("the job's database writer stopped")

    def _write(self) -> None:
        from openmaker.jobs.db import writer_sessions

        self.sessions = writer_sessions(self.settings)
        while True:
            batch = self._next_batch()
            try:
                self._apply_all(batch)
            except Exception as exc:  # a lost batch of events must not stop the job or its end
                traceback.print_exc()
                for item in batch:
                    if isinstance(item, _Update):
                        item.error = exc  # its caller learns it
            self.backlog.give(sum(_cost(event) for event in batch if event is not None))
            for event in batch:
                if isinstance(event, _Update) and not event.now and event.error is not None:
                    print(f"a change to the job was lost: {event.error}", file=sys.stderr)
                if isinstance(event, _Flush):
                    event.done.set()
            if None in batch:  # closed
                return

    def _next_batch(self) -> list[_Item]:
        batch = [self.queue.get()]
        rows = _rows(batch[0])
        until = time.monotonic() + LINGER_SECONDS
        while rows < BATCH_ROWS and not _now(batch[-1]):
            try:
                # More events that come soon share the transaction; a backlog is taken whole.
                wait = until - time.monotonic() if rows < LINGER_ROWS else 0.0
                batch.append(self.queue.get(timeout=wait) if wait > 0 else self.queue.get_nowait())
            except queue.Empty:
                break
            rows += _rows(batch[-1])
        return batch

    def _apply_all(self, batch: list[_Item]) -> None:
        if not any(_writes(item) for item in batch):
            return  # flushes and the end alone: no transaction
        assert self.sessions is not None
        lines: list[tuple[int, int, int, str]] = []
        metrics: list[tuple[str, str, int, float, str | None]] = []
        # A host's utilization samples: a few per minute, not counted towards the log limit.
        system: list[tuple[str, str, str, int, float]] = []
        with self.sessions() as session:
            if not self.counted and any(isinstance(i, _Lines | _Metric) for i in batch):
                self._count_stored(session)
            job = session.get(self.table(), self.job_name)
            for item in batch:
                if isinstance(item, _Lines):
                    self._lines(session, item.host, item.timestamp_ms, item.messages, lines)
                elif isinstance(item, _Metric):
                    if self.limit.admit(METRIC_BYTES + len(item.name)):
                        metrics.append(
                            (self.job_name, item.name, item.timestamp_ms, item.value, item.host)
                        )
                elif isinstance(item, _Samples):
                    system.extend(
                        (self.job_name, item.host, name, item.timestamp_ms, value)
                        for name, value in item.values.items()
                    )
                elif job is not None and isinstance(item, _Change):
                    self.apply(job, item.change)
                elif isinstance(item, _Update):
                    if job is None:
                        item.error = LookupError(f"job {self.job_name} is not in the database")
                    else:
                        item.change(job)
                        item.row = job
            connection = session.connection()
            if lines:
                connection.exec_driver_sql(INSERT_LINE, lines)
            if metrics:
                connection.exec_driver_sql(INSERT_METRIC, metrics)
            if system:
                connection.exec_driver_sql(INSERT_SYSTEM_METRIC, system)
            session.commit()

    def _count_stored(self, session: Session) -> None:
        """What earlier attempts stored, before this one's first line or metric value."""
        self.counted = True
        try:
            self.limit.start(stored_bytes(session, self.log_group, self.job_name))
        except Exception:  # counted from zero then: the limit still holds for this attempt
            traceback.print_exc()

    def _lines(
        self,
        session: Session,
        host: str,
        timestamp: int,
        messages: list[str],
        rows: list[tuple[int, int, int, str]],
    ) -> None:
        """Add the rows of the lines that fit under the job's limit, and the line saying that
        the limit was reached once it is."""
        if self.limit.announced:
            return
        stream = self._stream(session, host, timestamp)
        kept = self.limit.fit([len(m.encode()) + EVENT_OVERHEAD for m in messages])
        ingested = int(time.time() * 1000)
        rows.extend((stream, timestamp, ingested, m) for m in messages[:kept])
        if self.limit.reached:
            rows.append((stream, timestamp, ingested, self.limit.marker()))
            self.limit.announced = True

    def _stream(self, session: Session, host: str, timestamp: int) -> int:
        """The id of the host's stream in the job's group, made at its first line."""
        from sqlalchemy import select

        from openmaker.jobs.db import LogStream

        known = self.streams.get(host)
        if known is not None:
            return known
        name = stream_name(self.job_name, host, timestamp // 1000)
        # A restarted job's new attempt may start within the same second: one stream.
        query = select(LogStream).where(LogStream.group == self.log_group, LogStream.name == name)
        stream = session.scalars(query).first()
        if stream is None:
            stream = LogStream(
                name=name, group=self.log_group, job_name=self.job_name, creation_time=timestamp
            )
            session.add(stream)
            session.flush()
        self.streams[host] = stream.id
        return stream.id


def stored_bytes(session: Session, group: str, job_name: str) -> int:
    """What a job's earlier attempts stored (in its kind's log `group`), as counted towards its
    log limit. In SQL as the inserts are: a fresh worker compiles no statement for it."""
    connection = session.connection()
    lines = connection.exec_driver_sql(STORED_LINES, (EVENT_OVERHEAD, group, job_name)).scalar()
    metrics = connection.exec_driver_sql(STORED_METRICS, (METRIC_BYTES, job_name)).scalar()
    return int(lines or 0) + int(metrics or 0)


class _LogLimit:
    """The bytes a job may still store (log lines, and metric values found in them)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.stored = limit, 0
        # Reached: nothing more is stored. Announced: the line saying so is written.
        self.reached = self.announced = False

    def start(self, stored: int) -> None:
        # An earlier attempt that reached the limit has said so already.
        self.stored = stored
        self.reached = self.announced = stored >= self.limit

    def fit(self, sizes: list[int]) -> int:
        """How many of these lines fit; from the first that does not, the limit is reached."""
        if self.reached:
            return 0
        if self.stored + sum(sizes) <= self.limit:
            self.stored += sum(sizes)
            return len(sizes)
        room = self.limit - self.stored
        kept = next(i for i, total in enumerate(accumulate(sizes)) if total > room)
        self.stored += sum(sizes[:kept])
        self.reached = True
        return kept

    def admit(self, size: int) -> bool:
        if self.reached or self.stored + size > self.limit:
            self.reached = True
            return False
        self.stored += size
        return True

    def marker(self) -> str:
        return (
            f"openmaker: this job's logs reached their limit of {self.limit / 1024**2:g} MB "
            "(OPENMAKER_LOG_LIMIT_MB); what the job prints from here on is dropped, not stored"
        )


class _Backlog:
    """The cost of the events queued and not yet written; `take` waits while it is full."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.used = capacity, 0
        self.changed = threading.Condition()

    def take(self, cost: int, writing: Callable[[], bool]) -> None:
        if not cost:
            return
        with self.changed:
            # An event larger than the whole backlog still passes, alone.
            while self.used and self.used + cost > self.capacity:
                if not writing():
                    return  # lost with the writer; never wait forever
                self.changed.wait(0.5)
            self.used += cost

    def give(self, cost: int) -> None:
        with self.changed:
            self.used -= cost
            self.changed.notify_all()


@dataclass(frozen=True, slots=True)
class _Lines:
    host: str
    timestamp_ms: int
    messages: list[str]
    cost: int  # what they hold of the backlog


@dataclass(frozen=True, slots=True)
class _Metric:
    name: str
    timestamp_ms: int
    value: float
    host: str | None


@dataclass(frozen=True, slots=True)
class _Samples:
    host: str
    timestamp_ms: int
    values: dict[str, float]


@dataclass(frozen=True, slots=True)
class _Change:
    change: object


class _Flush:
    """Done once what came before is written."""

    now = True  # written at once, with what came before

    def __init__(self, done: threading.Event) -> None:
        self.done = done


class _Update(_Flush):
    """A change to the job's row (`change(job)`), written with the events before it."""

    def __init__(self, done: threading.Event, change: Callable[[Any], None], now: bool) -> None:
        super().__init__(done)
        self.change, self.now = change, now
        self.row: object | None = None  # the row, changed and written
        self.error: BaseException | None = None


# What waits for the writer; None closes it.
_Item = _Lines | _Metric | _Samples | _Change | _Flush | None


def _now(item: _Item) -> bool:
    """Whether the writer writes at once, not waiting for more events: someone waits for it."""
    return item is None or (isinstance(item, _Flush) and item.now)


def _writes(item: _Item) -> bool:
    """Whether the item changes the database (a flush alone does not)."""
    return item is not None and (not isinstance(item, _Flush) or isinstance(item, _Update))


def _cost(item: _Item) -> int:
    """What an item holds of the backlog: changes and flushes never wait."""
    if isinstance(item, _Lines):
        return item.cost
    if isinstance(item, _Metric):
        return ROW_COST
    return 0


def _rows(item: _Item) -> int:
    return len(item.messages) if isinstance(item, _Lines) else 1
