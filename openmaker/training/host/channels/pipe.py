"""Pipe channels: the channel's data streamed into FIFOs `<channel>_<epoch>`, epoch after epoch.

The streamer runs in the worker, outside the sandbox, and writes into the FIFOs in the host's
`ml/input/data` (the code sees them at /opt/ml/input/data), through a handle on that folder taken
before the code starts: FIFOs are made and opened relative to it, never through a link, and
written only once the descriptor is seen to be a FIFO (the code may swap anything there).
`<channel>_0` exists before the code starts; `<channel>_<n+1>` appears once epoch n has been
written whole (EOF) or its reader has closed it early. Objects are fetched a few ahead of the
one being written, each as a bounded stream of chunks: memory stays bounded whatever the
objects' sizes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import stat
import tempfile
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openmaker.runtime.spec import User
from openmaker.store import StoreError
from openmaker.store.stream import CHUNK_SIZE, Chunk, object_size, stream_object
from openmaker.training.host import jobtree
from openmaker.training.host.channels import recordio
from openmaker.training.host.channels.objects import (
    AugmentedLine,
    ChannelError,
    ChannelObject,
    augmented_lines,
    for_host,
    list_channel,
)
from openmaker.training.host.events import Emit, LogLine
from openmaker.training.host.plan import ChannelPlan, DataType, InputMode
from openmaker.training.host.spec import HostSpec

# How often the streamer looks for a reader (a FIFO cannot be opened for writing without one).
READER_POLL_SECONDS = 0.02
# Records (objects, attribute values) fetched ahead of the one being written, and the chunks
# each may hold. A record counts against MEMORY_BUDGET with what it may hold at once (a large
# object: its queued chunks and parts in flight, at most RECORD_MEMORY): the bound on the
# streamer's memory, whatever the objects' sizes.
RECORDS_AHEAD = 32
CHUNKS_PER_RECORD = 4
RECORD_MEMORY = 64 * 1024 * 1024
MEMORY_BUDGET = 128 * 1024 * 1024
# Small records are gathered into writes of this size: one write per 64 KiB object costs more
# than the bytes themselves.
WRITE_SIZE = 1024 * 1024

Record = ChannelObject | bytes


@dataclass(frozen=True)
class PipePlan:
    """What one Pipe channel streams, fixed before the code starts."""

    name: str
    channel: ChannelPlan
    # Objects (S3Prefix, ManifestFile) or augmented manifest lines, before sharding.
    items: list[ChannelObject] | list[AugmentedLine]
    gzip: bool
    recordio: bool


def pipe_channels(spec: HostSpec) -> list[ChannelPlan]:
    return spec.plan.channels_in(InputMode.PIPE)


async def plan_pipe(spec: HostSpec, channel: ChannelPlan) -> PipePlan:
    """List the channel now, so that a channel that cannot be read fails before the code runs."""
    items: list[ChannelObject] | list[AugmentedLine]
    if channel.data_type == DataType.AUGMENTED_MANIFEST:
        items = await augmented_lines(spec, channel)
    else:
        items = await list_channel(spec, channel)
    return PipePlan(
        name=channel.name,
        channel=channel,
        items=items,
        gzip=channel.gzip,
        recordio=channel.recordio,
    )


def epoch_records(spec: HostSpec, plan: PipePlan, epoch: int) -> list[Record]:
    """The records of one epoch for this host: objects, or augmented lines' values in order."""
    items: Sequence[ChannelObject | AugmentedLine] = plan.items
    records: list[Record] = []
    for item in for_host(spec, plan.channel, items, epoch):
        if isinstance(item, list):
            records += item
        else:
            records.append(item)
    return records


class PipeStreamer:
    """One Pipe channel of one host, streamed epoch after epoch until stop()."""

    def __init__(self, spec: HostSpec, plan: PipePlan, emit: Emit, tree: jobtree.HostTree) -> None:
        self.spec = spec
        self.tree = tree  # the host's handles: the FIFOs are made through them
        self.plan = plan
        self.emit = emit
        # FIFOs `<last part>_<epoch>` beside the channel's folder: input/data/<name>_0 for a
        # training channel.
        self.parent, _, self.base = plan.channel.folder.rpartition("/")
        self.folder = spec.ml_dir / self.parent
        self.folder_fd: int | None = None  # the handle on `folder`, from start() on
        self.spool = spec.work_dir / "pipe-spool"
        self.error: str | None = None
        self.on_error: Callable[[str], None] = lambda _: None
        self._stopped = threading.Event()
        # A non-root image USER the FIFOs are given to (give_to), and what keeps a FIFO's
        # making and giving apart from give_to.
        self._owner: User | None = None
        self._owning = threading.Lock()
        self._epoch = 0
        # Daemon: a write blocked on a reader that never reads must not keep the worker alive.
        self._thread = threading.Thread(target=self._run, name=f"pipe-{plan.name}", daemon=True)

    def fifo(self, epoch: int) -> Path:
        """Where a reader finds the FIFO of `epoch` (the streamer itself never uses this path)."""
        return self.folder / self._name(epoch)

    def _name(self, epoch: int) -> str:
        return f"{self.base}_{epoch}"

    def start(self) -> None:
        # Before the code starts, the folder is openmaker's own.
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder_fd = self.tree.open(self.parent)
        try:
            # `_0` exists before the code starts, whatever the thread's timing.
            self._make_fifo(0)
            self._thread.start()
        except BaseException:
            os.close(self.folder_fd)
            raise

    def stop(self, timeout: float = 5.0) -> None:
        self._stopped.set()
        self._thread.join(timeout)

    def give_to(self, user: User) -> None:
        """Make the FIFOs `user`'s (the image's non-root USER): the one waiting now and those
        of the epochs to come, so that the code can open them."""
        with self._owning:
            self._owner = user
            self._give(self._epoch)

    def _make_fifo(self, epoch: int) -> None:
        with self._owning:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._name(epoch), dir_fd=self.folder_fd)  # a link: the link goes
            os.mkfifo(self._name(epoch), 0o600, dir_fd=self.folder_fd)
            self._epoch = epoch
            self._give(epoch)

    def _give(self, epoch: int) -> None:
        """The FIFO of `epoch` to the owner, through a handle on it: whatever the code may have
        put in its place since (a link, a file) is left as it is."""
        if self._owner is None or self.folder_fd is None:
            return
        try:
            # A path handle: opening the FIFO itself would count as a reader.
            flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(self._name(epoch), flags, dir_fd=self.folder_fd)
        except OSError:
            return  # gone or replaced: the writer finds out and says so
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.chown(f"/proc/self/fd/{fd}", self._owner.uid, self._owner.gid)
        finally:
            os.close(fd)

    def _run(self) -> None:
        assert self.folder_fd is not None
        try:
            self._stream_epochs()
        except Exception as exc:  # reported as the job's failure, never lost with the thread
            if self._stopped.is_set() or os.fstat(self.folder_fd).st_nlink == 0:
                return  # the host has ended under the streamer: nothing left to fail
            self.error = f"channel {self.plan.name!r}: {exc}"
            self.emit(LogLine(self.spec.host_name, _now_ms(), f"Pipe input failed: {self.error}"))
            self.on_error(self.error)
        finally:
            os.close(self.folder_fd)

    def _stream_epochs(self) -> None:
        epoch = 0
        while True:
            fd = self._open_writer(epoch)
            if fd is None:
                return
            try:
                asyncio.run(self._stream_epoch(fd, epoch))
            finally:
                os.close(fd)
            epoch += 1
            if self._stopped.is_set():
                return
            self._make_fifo(epoch)

    def _open_writer(self, epoch: int) -> int | None:
        """Wait for a reader (or stop()); the FIFO opened for blocking writes, or None."""
        name, folder = self._name(epoch), self.folder_fd
        while not self._stopped.is_set():
            try:
                # Looked at first: opening a device the code made there could act on it.
                if not stat.S_ISFIFO(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode):
                    self._replaced(name)
                    return None
                writing = os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
                fd = os.open(name, writing, dir_fd=folder)
            except FileNotFoundError:
                return None  # the host's folder is gone: the host has ended
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.EISDIR):  # replaced since it was looked at
                    self._replaced(name)
                    return None
                if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                    raise
                self._stopped.wait(READER_POLL_SECONDS)
                continue
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.close(fd)
                self._replaced(name)
                return None
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
            return fd
        return None

    def _replaced(self, name: str) -> None:
        """The code put something else where the FIFO was: nothing is written there, and the
        channel ends (its reader is the code's own doing)."""
        assert self.folder_fd is not None
        what = jobtree.describe(self.folder_fd, name)
        self.emit(
            LogLine(
                self.spec.host_name,
                _now_ms(),
                f"openmaker ignored /opt/ml/{self.parent}/{name}: the training program left "
                f"{what} there in place of its FIFO, and openmaker never writes through a job's "
                f"links; Pipe channel {self.plan.name!r} streams no further epochs",
            )
        )

    async def _stream_epoch(self, fd: int, epoch: int) -> None:
        records = epoch_records(self.spec, self.plan, epoch)
        writer = _Writer(fd)
        try:
            async for chunk in _ordered(records, self._record_bytes):
                if self._stopped.is_set():
                    return
                await writer.write(chunk)
            await writer.flush()
        except BrokenPipeError:
            return  # the reader closed this epoch early: on to the next one

    async def _record_bytes(self, record: Record) -> AsyncIterator[Chunk]:
        """The bytes of one record as they go into the FIFO (decompressed, framed)."""
        if isinstance(record, bytes):
            if self.plan.recordio:
                yield recordio.header(len(record))
            yield record
            if self.plan.recordio:
                yield recordio.padding(len(record))
            return
        try:
            async for chunk in self._object_bytes(record):
                yield chunk
        except StoreError as exc:
            raise StoreError(f"cannot read {record.uri}: {exc}") from None
        except (zlib.error, recordio.RecordTooLarge) as exc:
            raise ChannelError(f"cannot stream {record.uri}: {exc}") from None

    async def _object_bytes(self, record: ChannelObject) -> AsyncIterator[Chunk]:
        size = record.size if record.size >= 0 else await object_size(record.store, record.key)
        chunks = stream_object(record.store, record.key, size)
        if self.plan.gzip:
            chunks = _gunzip(chunks)
        if not self.plan.recordio:
            async for chunk in chunks:
                yield chunk
            return
        if self.plan.gzip:
            # A record's length comes before its bytes, and a gzip stream does not say how long
            # it will be: the object is decompressed to disk first, never into memory.
            async for chunk in self._spooled_record(chunks):
                yield chunk
            return
        yield recordio.header(size)
        async for chunk in chunks:
            yield chunk
        yield recordio.padding(size)

    async def _spooled_record(self, chunks: AsyncIterator[Chunk]) -> AsyncIterator[bytes]:
        self.spool.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=self.spool) as spool:
            async for chunk in chunks:
                await asyncio.to_thread(spool.write, chunk)
            length = spool.tell()
            spool.seek(0)
            yield recordio.header(length)
            while chunk := await asyncio.to_thread(spool.read, CHUNK_SIZE):
                yield chunk
            yield recordio.padding(length)


async def _gunzip(chunks: AsyncIterator[Chunk]) -> AsyncIterator[bytes]:
    """Decompress a gzip stream of one or more members, at most CHUNK_SIZE bytes at a time
    (a small chunk may inflate to far more)."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    async for chunk in chunks:
        data = chunk
        while data:
            out = await asyncio.to_thread(inflater.decompress, data, CHUNK_SIZE)
            if out:
                yield out
            data = inflater.unconsumed_tail
            if inflater.eof:
                # Another gzip member may follow the first (as `cat a.gz b.gz` makes).
                data = inflater.unused_data
                inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    if tail := inflater.flush():
        yield tail


async def _ordered(
    records: list[Record], produce: Callable[[Record], AsyncIterator[Chunk]]
) -> AsyncIterator[Chunk]:
    """The bytes of every record in order, with up to RECORDS_AHEAD records fetched at once."""
    done = object()
    slots = asyncio.Semaphore(RECORDS_AHEAD)
    budget = _Budget(MEMORY_BUDGET)
    started: asyncio.Queue[tuple[asyncio.Queue[Any], int] | None] = asyncio.Queue()
    tasks: list[asyncio.Task[None]] = []

    async def fill(record: Record, queue: asyncio.Queue[Any]) -> None:
        try:
            async for chunk in produce(record):
                await queue.put(chunk)
            await queue.put(done)
        except Exception as exc:  # handed to the writer, which raises it in order
            await queue.put(exc)

    async def launch() -> None:
        for record in records:
            weight = _weight(record)
            await slots.acquire()
            await budget.take(weight)
            queue: asyncio.Queue[Any] = asyncio.Queue(CHUNKS_PER_RECORD)
            tasks.append(asyncio.create_task(fill(record, queue)))
            await started.put((queue, weight))
        await started.put(None)

    launcher = asyncio.create_task(launch())
    try:
        while (entry := await started.get()) is not None:
            queue, weight = entry
            while (item := await queue.get()) is not done:
                if isinstance(item, Exception):
                    raise item
                yield item
            slots.release()
            await budget.give(weight)
    finally:
        launcher.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(launcher, *tasks, return_exceptions=True)


def _weight(record: Record) -> int:
    """What a record may hold in memory at once while it waits to be written."""
    if isinstance(record, bytes):
        return len(record)
    if record.size < 0:
        return RECORD_MEMORY  # not known before it is fetched: assume the most
    return min(record.size, RECORD_MEMORY) + CHUNK_SIZE


class _Budget:
    """Bytes that records fetched ahead may hold; one record always goes, however large."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.free = total
        self.changed = asyncio.Condition()

    async def take(self, amount: int) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: self.free >= amount or self.free == self.total)
            self.free -= amount

    async def give(self, amount: int) -> None:
        async with self.changed:
            self.free += amount
            self.changed.notify_all()


class _Writer:
    """Writes to the FIFO in a thread, so that fetching goes on while the reader is slow."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pending = bytearray()

    async def write(self, chunk: Chunk) -> None:
        if not self.pending and len(chunk) >= WRITE_SIZE:
            await asyncio.to_thread(_write_all, self.fd, chunk)
            return
        self.pending += chunk
        if len(self.pending) >= WRITE_SIZE:
            await self.flush()

    async def flush(self) -> None:
        if self.pending:
            data, self.pending = bytes(self.pending), bytearray()
            await asyncio.to_thread(_write_all, self.fd, data)


def _write_all(fd: int, data: Chunk) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _now_ms() -> int:
    return int(time.time() * 1000)
