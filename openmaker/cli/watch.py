"""Following a job from the terminal: its log lines, transfer progress bars, its end."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from rich.console import Console
from rich.markup import escape

from openmaker.jobs.logs import LogRecord
from openmaker.settings import sqlite_file
from openmaker.training.state import TERMINAL

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

POLL_SECONDS = 0.2
# A short job ends within a second: the first looks come sooner, each later one a bit later,
# until every POLL_SECONDS.
FIRST_POLL_SECONDS = 0.02
POLL_GROWTH = 1.5
# In-process, a change of the database's file is looked for this often between two looks, and
# wakes the follower, but no sooner than MIN_POLL_SECONDS after its last look.
WAKE_SECONDS = 0.005
MIN_POLL_SECONDS = 0.02


class JobsClient(Protocol):
    """What following a job needs: `TrainingJobs` in-process, `RemoteJobs` through a server."""

    def describe(self, name: str) -> dict[str, Any]: ...
    def progress(self, name: str) -> dict[str, Any] | None: ...
    def log_events(self, name: str, after_id: int = 0, limit: int = 1000) -> list[LogRecord]: ...


class _Printer:
    """Prints what is new in a job: status transitions and log lines, merged by time."""

    def __init__(self, jobs: JobsClient, name: str, console: Console, logs: bool) -> None:
        self.jobs, self.name, self.console, self.logs = jobs, name, console, logs
        self.after = 0  # the last log record printed
        self.shown = 0  # the status transitions printed

    def print_new(self, transitions: list[dict[str, Any]]) -> None:
        lines: list[tuple[float, str]] = [
            (step["StartTime"].timestamp(), _status_line(step))
            for step in transitions[self.shown :]
        ]
        self.shown = len(transitions)
        while self.logs and (batch := self.jobs.log_events(self.name, self.after)):
            lines += [(record.timestamp / 1000, _log_line(record)) for record in batch]
            self.after = batch[-1].id
        for _, line in sorted(lines, key=lambda item: item[0]):
            self.console.print(line, highlight=False)


def _status_line(step: dict[str, Any]) -> str:
    return f"[bold]{escape(step['Status'])}[/bold]: {escape(step['StatusMessage'])}"


def _log_line(record: LogRecord) -> str:
    host = record.stream.split("/", 1)[-1].rsplit("-", 1)[0]
    return f"[dim]{host}[/dim] {escape(record.message)}"


def follow(
    jobs: JobsClient, name: str, console: Console, logs: bool = True, wake: Path | None = None
) -> dict[str, Any]:
    """Print the job's status changes, logs and progress until it ends; returns its description.
    `wake`: a file that changes whenever the job's record may have (see `changes_file`)."""
    # Progress bars load only for a command that follows a job.
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    printer = _Printer(jobs, name, console, logs)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
    )
    bars = _Bars(progress, console)
    wait = FIRST_POLL_SECONDS
    with progress:
        while True:
            # Taken before looking: a change made while it looks wakes the next look.
            seen = _stamp(wake)
            description = jobs.describe(name)
            transitions = description["SecondaryStatusTransitions"]
            current = jobs.progress(name)
            # The last transfer's figures stay in place after its phase; show only a live one.
            if current and current["total"] and current["phase"] == transitions[-1]["Status"]:
                bars.show(current["phase"], current["done"], current["total"], current["seconds"])
            else:
                bars.close(current)
            printer.print_new(transitions)
            if description["TrainingJobStatus"] in TERMINAL:
                return description
            _sleep(wait, wake, seen)
            wait = min(POLL_SECONDS, wait * POLL_GROWTH)


def changes_file(database_url: str) -> Path | None:
    """SQLite's write-ahead log: every commit of the database (a job's worker's too) changes
    it. None for another database."""
    path = sqlite_file(database_url)
    return None if path is None else path.with_name(f"{path.name}-wal")


def _sleep(seconds: float, wake: Path | None, seen: tuple[int, int]) -> None:
    """Sleep `seconds`, or less once `wake` differs from `seen`: a job's end is seen within
    WAKE_SECONDS, not up to POLL_SECONDS later, at the price of a stat() every WAKE_SECONDS."""
    if wake is None:
        time.sleep(seconds)
        return
    deadline = time.monotonic() + seconds
    # A chatty job's log lines wake the follower at most this often.
    time.sleep(min(seconds, MIN_POLL_SECONDS))
    while (left := deadline - time.monotonic()) > 0 and _stamp(wake) == seen:
        time.sleep(min(left, WAKE_SECONDS))


def _stamp(path: Path | None) -> tuple[int, int]:
    if path is None:
        return (0, 0)
    try:
        status = path.stat()
    except OSError:
        return (0, 0)
    return (status.st_mtime_ns, status.st_size)


class _Bars:
    """One bar for the transfer under way; a finished one leaves a line saying what moved."""

    def __init__(self, progress: Progress, console: Console) -> None:
        self.progress, self.console = progress, console
        self.phase: str | None = None
        self.task: TaskID | None = None
        self.done = 0
        self.seconds = 0.0

    def show(self, phase: str, done: int, total: int, seconds: float) -> None:
        if phase != self.phase:
            self.close()
            self.phase = phase
            self.task = self.progress.add_task(phase, total=total)
        assert self.task is not None
        self.progress.update(self.task, completed=done, total=total)
        self.done, self.seconds = done, seconds

    def close(self, final: dict[str, Any] | None = None) -> None:
        """End the bar; `final` holds the phase's last figures once the phase is over."""
        if self.task is None:
            return
        if final and final["phase"] == self.phase:
            self.done, self.seconds = final["done"], final["seconds"]
        from rich import filesize

        self.progress.remove_task(self.task)
        moved = filesize.decimal(self.done)
        self.console.print(f"[dim]{self.phase}: {moved} in {self.seconds:.1f} s[/dim]")
        self.task = self.phase = None


def print_logs(jobs: JobsClient, name: str, console: Console, follow_: bool) -> None:
    printer = _Printer(jobs, name, console, logs=True)
    while True:
        # Read the status first: every line written before the job ended is then printed.
        ended = jobs.describe(name)["TrainingJobStatus"] in TERMINAL
        printer.print_new([])
        if ended or not follow_:
            return
        time.sleep(POLL_SECONDS)
