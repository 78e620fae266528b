"""What a Describe of an ended job answered, kept to answer again without building it anew.

An ended job's description no longer changes: its worker is gone, a stop is refused, and its
request cannot be updated. Still, each answer from here is first checked against the job's row
(its status and last-modified time, read with one plain sqlite3 query on a read-only
connection of this thread's own): a row changed or gone means no answer, and the caller reads
the job the full way. The read is short enough to make on the server's event loop.
"""

from __future__ import annotations

import sqlite3
import threading
import urllib.parse
from collections import OrderedDict
from datetime import datetime
from typing import Any

from openmaker.settings import sqlite_file

# Descriptions kept (a few KiB each); the least recently used go first.
KEPT = 1024
# How long a read waits on a lock before the caller goes the full way instead.
BUSY_MS = 50

_Key = tuple[str, datetime]  # (status, last-modified time) as the row holds them


class EndedDescriptions:
    """Descriptions of ended jobs of one table, by job name."""

    def __init__(self, database_url: str, table: str, ended: frozenset[str]) -> None:
        self._path = sqlite_file(database_url)
        self._query = f"SELECT status, last_modified_time FROM {table} WHERE name = ?"
        self._ended = ended
        self._kept: OrderedDict[str, tuple[_Key, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()
        self._local = threading.local()

    def keep(self, name: str, status: str, modified: datetime, described: dict[str, Any]) -> None:
        """Keep `described` (not to be changed after), if the job has ended."""
        if self._path is None or status not in self._ended:
            return
        with self._lock:
            self._kept[name] = ((status, _naive(modified)), described)
            self._kept.move_to_end(name)
            while len(self._kept) > KEPT:
                self._kept.popitem(last=False)

    def get(self, name: str) -> dict[str, Any] | None:
        """The kept description of job `name` if its row still matches it, else None."""
        with self._lock:
            entry = self._kept.get(name)
        if entry is None:
            return None
        key, described = entry
        try:
            row = self._connection().execute(self._query, (name,)).fetchone()
        except sqlite3.Error:
            return None  # busy, or gone: the full way says what holds
        if row is None or (row[0], _parsed(row[1])) != key:
            return None
        return described

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            assert self._path is not None
            uri = f"file:{urllib.parse.quote(str(self._path))}?mode=ro"
            connection = sqlite3.connect(uri, uri=True, timeout=BUSY_MS / 1000)
            self._local.connection = connection
        return connection


def _parsed(stored: object) -> datetime | None:
    if not isinstance(stored, str):
        return None
    try:
        return _naive(datetime.fromisoformat(stored))
    except ValueError:
        return None


def _naive(moment: datetime) -> datetime:
    # SQLite keeps times without their zone; every time openmaker stores is UTC.
    return moment.replace(tzinfo=None)
