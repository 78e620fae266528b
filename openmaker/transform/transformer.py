"""Transforming one input object on one instance: split it into records, pack them into
mini-batches, post those (up to `MaxConcurrentTransforms` at once), and write the answers, in
input order, to the object's output — only once every mini-batch of it succeeded."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from openmaker.settings import StoreSettings
from openmaker.store.errors import StoreError
from openmaker.transform.batcher import Batch, BatchError, batches
from openmaker.transform.filters import DataProcessing, FilterError
from openmaker.transform.invoker import InvocationError, Invoker
from openmaker.transform.objects import InputObject, output_location, read, write
from openmaker.transform.parameters import Parameters
from openmaker.transform.splitter import SplitError, split


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


class ObjectTransformer:
    def __init__(self, setup: Setup, invoker: Invoker, stop: threading.Event) -> None:
        self.setup, self.invoker, self.stop = setup, invoker, stop
        self.pool = ThreadPoolExecutor(setup.parameters.max_concurrent)

    def transform(self, item: InputObject) -> str | None:
        """Transform `item`; None once its output is written, else why it failed."""
        setup = self.setup
        try:
            data = memoryview(read(item))
            originals = split(data, setup.split_type)
            records = [setup.processing.input(r) for r in originals]
            packed = batches(records, setup.parameters.strategy, setup.parameters.max_payload_mb)
            answers = self._invoke_all(packed)
            output = self._assemble(originals, packed, answers)
            write(output_location(setup.output_path, item.relative, setup.store), output)
        except (StoreError, SplitError, BatchError, FilterError) as exc:
            return str(exc)
        except _BatchFailed as failed:
            return f"{failed.batch.described}: {failed.cause}"
        return None

    def _invoke_all(self, packed: list[Batch]) -> list[bytes]:
        chunked = self.setup.parameters.max_payload_mb == 0
        futures: list[Future[bytes]] = [
            self.pool.submit(self._invoke, batch, chunked) for batch in packed
        ]
        answers = []
        try:
            for batch, future in zip(packed, futures, strict=True):
                try:
                    answers.append(future.result())
                except InvocationError as exc:
                    raise _BatchFailed(batch, str(exc)) from None
        finally:
            for future in futures:
                future.cancel()
        return answers

    def _invoke(self, batch: Batch, chunked: bool) -> bytes:
        if self.stop.is_set():
            raise Stopped()
        return self.invoker.invoke(batch.body, chunked)

    def _assemble(
        self, originals: list[memoryview], packed: list[Batch], answers: list[bytes]
    ) -> bytes:
        line = self.setup.assemble_with == "Line"
        processing = self.setup.processing
        parts: list[bytes] = []
        for batch, answer in zip(packed, answers, strict=True):
            inputs = originals[batch.first : batch.first + len(batch.records)]
            for output in processing.outputs(inputs, answer):
                parts.append(output)
                if line and not output.endswith(b"\n"):
                    parts.append(b"\n")
        return b"".join(parts)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class _BatchFailed(Exception):
    def __init__(self, batch: Batch, cause: str) -> None:
        self.batch, self.cause = batch, cause
