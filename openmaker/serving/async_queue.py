"""An endpoint's queue of asynchronous invocations: one JSON file per request, on disk.

The server puts a request in (InvokeEndpointAsync); the endpoint's worker takes them in the
order they came (serving/async_runner.py) and removes each once its result is written. The
files outlive the server and the worker's restarts: a request is answered at least once. Names
sort in arrival order (the arrival time in nanoseconds, then a random part).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from openmaker.settings import Settings

SUFFIX = ".json"


@dataclass(frozen=True)
class AsyncRequest:
    inference_id: str
    input_location: str
    output_location: str
    failure_location: str | None
    content_type: str | None
    accept: str | None
    custom_attributes: str | None
    ttl_seconds: int
    timeout_seconds: int
    queued_at: float  # seconds since the epoch
    # The input given inline (InvokeEndpointAsync's Body, base64) instead of `input_location`.
    body: str | None = None


def folder(settings: Settings, endpoint: str) -> Path:
    return settings.home / "endpoints" / endpoint / "async-queue"


def put(queue: Path, request: AsyncRequest) -> None:
    queue.mkdir(parents=True, exist_ok=True)
    name = f"{time.time_ns():020d}-{uuid.uuid4().hex}"
    partial = queue / f".{name}.partial"
    with open(partial, "w") as file:
        json.dump(asdict(request), file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, queue / f"{name}{SUFFIX}")  # whole, or not there at all


def waiting(queue: Path) -> list[Path]:
    """The requests not yet answered, oldest first."""
    try:
        names = [e.name for e in os.scandir(queue) if e.name.endswith(SUFFIX)]
    except FileNotFoundError:
        return []
    return [queue / n for n in sorted(names) if not n.startswith(".")]


def queued_at(entry: Path) -> float:
    """When the request was put in (seconds since the epoch), from its name."""
    return int(entry.name[:20]) / 1e9


def read(entry: Path) -> AsyncRequest:
    return AsyncRequest(**json.loads(entry.read_text()))


def answered(entry: Path) -> None:
    entry.unlink(missing_ok=True)


def remove(queue: Path) -> None:
    shutil.rmtree(queue, ignore_errors=True)
