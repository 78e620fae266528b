"""Transforming one input object on one instance, as it is read: split it into records, pack
them into mini-batches, post those, and write the answers, in input order, to a file of the
job's as they come back. The file is put at the object's output only once every mini-batch of
it succeeded: an object's output appears whole or not at all.

An instance has `MaxConcurrentTransforms` requests in flight at most (one pool of that many
threads posts the mini-batches of all its objects); an object keeps at most that many of its
mini-batches read ahead of what was written, so memory stays bounded whatever its size.
"""

from __future__ import annotations

import tempfile
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from openmaker.settings import StoreSettings
from openmaker.store.errors import StoreError
from openmaker.transform.batcher import Batch, BatchError, batches
from openmaker.transform.filters import DataProcessing, FilterError
from openmaker.transform.invoker import InvocationError, Invoker
from openmaker.transform.objects import InputObject, chunks, output_location, upload
from openmaker.transform.parameters import Parameters
from openmaker.transform.splitter import SplitError, records


class Stopped(Exception):
    """The job was stopped while the object was under way."""


@dataclass(frozen=True)
class Setup:
    """What every object of a job is transformed with."""

    split_type: str
    assemble_with: str  # Line | None
    output_path: str
    parameters: Parameters
    processing: DataProcessing
    store: StoreSettings
    scratch: Path  # where outputs are written before they are put


class ObjectTransformer:
    """The transforms of one instance: `transform` may be called from several threads."""

    def __init__(self, setup: Setup, invoker: Invoker, stop: threading.Event) -> None:
        self.setup, self.invoker, self.stop = setup, invoker, stop
        self.pool = ThreadPoolExecutor(setup.parameters.max_concurrent)

    def transform(self, item: InputObject) -> str | None:
        """Transform `item`; None once its output is written, else why it failed."""
        setup = self.setup
        try:
            with tempfile.NamedTemporaryFile(dir=setup.scratch, suffix=".out") as output:
                self._transform_into(item, output)
                output.flush()
                location = output_location(setup.output_path, item.relative, setup.store)
                upload(Path(output.name), location)
        except (StoreError, SplitError, BatchError, FilterError, OSError) as exc:
            return str(exc)
        except _BatchFailed as failed:
            return f"{failed.batch.described}: {failed.cause}"
        return None

    def _transform_into(self, item: InputObject, output: IO[bytes]) -> None:
        setup = self.setup
        window = setup.parameters.max_concurrent
        chunked = setup.parameters.max_payload_mb == 0
        pending: deque[tuple[Batch, Future[bytes]]] = deque()
        try:
            packed = batches(
                self._records(item), setup.parameters.strategy, setup.parameters.max_payload_mb
            )
            for batch in packed:
                if len(pending) >= window:
                    self._write(output, *pending.popleft())
                pending.append((batch, self.pool.submit(self._invoke, batch, chunked)))
            while pending:
                self._write(output, *pending.popleft())
        finally:
            for _, future in pending:
                future.cancel()

    def _records(self, item: InputObject) -> Iterator[tuple[memoryview, memoryview]]:
        processing = self.setup.processing
        for record in records(chunks(item), self.setup.split_type):
            yield record, processing.input(record)

    def _write(self, output: IO[bytes], batch: Batch, future: Future[bytes]) -> None:
        try:
            answer = future.result()
        except InvocationError as exc:
            if self.stop.is_set():  # it failed because its container was stopped
                raise Stopped() from None
            raise _BatchFailed(batch, str(exc)) from None
        line = self.setup.assemble_with == "Line"
        for part in self.setup.processing.outputs(batch.originals, answer):
            output.write(part)
            if line and not part.endswith(b"\n"):
                output.write(b"\n")

    def _invoke(self, batch: Batch, chunked: bool) -> bytes:
        if self.stop.is_set():
            raise Stopped()
        return self.invoker.invoke(batch.body, chunked)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class _BatchFailed(Exception):
    def __init__(self, batch: Batch, cause: str) -> None:
        self.batch, self.cause = batch, cause
