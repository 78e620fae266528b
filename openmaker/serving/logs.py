"""An endpoint's instances' output, into its log group (`/aws/sagemaker/Endpoints/<name>`,
stream `<variant>/<instance-id>`).

Lines wait in a bounded backlog and are written in batches; a container that floods its output
has the lines past the backlog dropped (and counted, in a line of their own), never the
worker's memory grown, and never more than the settings' log limit stored per endpoint.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from openmaker.jobs.db import LogEvent, LogStream
from openmaker.runtime.logs import OnLines
from openmaker.serving.kind import log_group

BACKLOG_BYTES = 4 * 1024 * 1024
FLUSH_SECONDS = 0.5


class EndpointLogs:
    def __init__(
        self,
        writers: sessionmaker[Session],
        endpoint: str,
        limit_bytes: int,
        group: str | None = None,  # another kind's group (a transform job's instances)
    ) -> None:
        self.writers, self.endpoint, self.limit = writers, endpoint, limit_bytes
        self.group = group or log_group(endpoint)
        self._lock = threading.Lock()
        self._pending: list[tuple[str, int, str]] = []
        self._pending_bytes = 0
        self._dropped: dict[str, int] = {}
        self._stored = 0
        self._streams: dict[str, int] = {}  # name: id, in the group
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def receiver(self, stream: str) -> OnLines:
        def on_lines(when: int, lines: list[str], size: int) -> None:
            with self._lock:
                for line in lines:
                    if self._pending_bytes + len(line) > BACKLOG_BYTES or self._over_limit():
                        self._dropped[stream] = self._dropped.get(stream, 0) + 1
                        continue
                    self._pending.append((stream, when, line))
                    self._pending_bytes += len(line)

        return on_lines

    def note(self, stream: str, message: str) -> None:
        """A line of openmaker's own in the stream (why an instance failed or restarted)."""
        with self._lock:
            self._pending.append((stream, int(time.time() * 1000), message))

    def _over_limit(self) -> bool:
        return self._stored + self._pending_bytes >= self.limit

    def _loop(self) -> None:
        while not self._closed.wait(FLUSH_SECONDS):
            self.flush()

    def flush(self) -> None:
        with self._lock:
            batch, self._pending, self._pending_bytes = self._pending, [], 0
            dropped, self._dropped = self._dropped, {}
        now = int(time.time() * 1000)
        batch += [
            (
                stream,
                now,
                f"[openmaker] {count} lines dropped: the output came faster than it "
                "could be stored, or the endpoint's log limit was reached",
            )
            for stream, count in dropped.items()
        ]
        if not batch:
            return
        with self.writers() as session:
            for stream in {stream for stream, _, _ in batch} - self._streams.keys():
                self._streams[stream] = self._stream_id(session, stream, now)
            session.add_all(
                LogEvent(stream_id=self._streams[s], timestamp=t, ingestion_time=now, message=m)
                for s, t, m in batch
            )
            session.commit()
        self._stored += sum(len(m) for _, _, m in batch)

    def _stream_id(self, session: Session, stream: str, now: int) -> int:
        query = select(LogStream.id).where(LogStream.group == self.group, LogStream.name == stream)
        found = session.scalar(query)
        if found is not None:
            return found
        made = LogStream(name=stream, group=self.group, job_name=self.endpoint, creation_time=now)
        session.add(made)
        session.flush()
        return made.id

    def close(self) -> None:
        self._closed.set()
        self._thread.join()
        self.flush()


Receiver = Callable[[str], OnLines]
