"""Following a job from the terminal: its log lines, transfer progress bars, its end."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from openmaker.jobs.service import TrainingJobs
from openmaker.jobs.state import TERMINAL

POLL_SECONDS = 0.2


class _Printer:
    def __init__(self, jobs: TrainingJobs, name: str, console: Console) -> None:
        self.jobs, self.name, self.console = jobs, name, console
        self.after = 0

    def new_lines(self) -> None:
        while batch := self.jobs.log_events(self.name, self.after):
            for record in batch:
                host = record.stream.split("/", 1)[-1].rsplit("-", 1)[0]
                self.console.print(f"[dim]{host}[/dim] {escape(record.message)}", highlight=False)
            self.after = batch[-1].id


def follow(jobs: TrainingJobs, name: str, console: Console, logs: bool = True) -> dict[str, Any]:
    """Print the job's status changes, logs and progress until it ends; returns its description."""
    printer = _Printer(jobs, name, console)
    secondary = None
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
    )
    bars: dict[str, TaskID] = {}
    with progress:
        while True:
            description = jobs.describe(name)
            if logs:
                printer.new_lines()
            if description["SecondaryStatus"] != secondary:
                secondary = description["SecondaryStatus"]
                message = description["SecondaryStatusTransitions"][-1]["StatusMessage"]
                console.print(f"[bold]{escape(secondary)}[/bold]: {escape(message)}")
            current = jobs.progress(name)
            if current and current["total"]:
                task = bars.get(current["phase"])
                if task is None:
                    _complete(progress, bars)  # an earlier phase is over
                    task = bars[current["phase"]] = progress.add_task(current["phase"])
                progress.update(task, completed=current["done"], total=current["total"])
            if description["TrainingJobStatus"] in TERMINAL:
                _complete(progress, bars)
                if logs:
                    printer.new_lines()
                return description
            time.sleep(POLL_SECONDS)


def _complete(progress: Progress, bars: dict[str, TaskID]) -> None:
    for task in bars.values():
        progress.update(task, completed=progress.tasks[task].total)


def print_logs(jobs: TrainingJobs, name: str, console: Console, follow_: bool) -> None:
    printer = _Printer(jobs, name, console)
    while True:
        printer.new_lines()
        if not follow_ or jobs.describe(name)["TrainingJobStatus"] in TERMINAL:
            printer.new_lines()
            return
        time.sleep(POLL_SECONDS)
