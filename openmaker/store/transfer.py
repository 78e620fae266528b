"""Concurrent downloads and atomic uploads through obstore, reporting bytes as they move."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import obstore
from obstore.exceptions import BaseError
from obstore.store import ObjectStore

from openmaker.store.errors import StoreError, short_message, translate_errors
from openmaker.store.location import Location
from openmaker.store.multipart import OnBytes as OnBytes  # named here by the callers
from openmaker.store.multipart import put_in_parts
from openmaker.store.ranged import download_ranged, ranged_store

# Objects up to this size are read whole rather than streamed.
WHOLE_READ_LIMIT = 1024 * 1024
# Small objects in flight at once; the server, not the client, is the limit past this.
OBJECTS_IN_FLIGHT = 64
# Uploads up to this size go in one PUT; larger ones are multipart (still atomic).
SINGLE_PUT_LIMIT = 16 * 1024 * 1024


def _ignore(_: int) -> None:
    pass


@dataclass(frozen=True)
class Download:
    store: ObjectStore
    key: str
    size: int
    destination: Path


@translate_errors
async def download_all(
    downloads: Sequence[Download], on_bytes: OnBytes = _ignore, in_flight: int = OBJECTS_IN_FLIGHT
) -> None:
    """Download every object to its destination, creating folders as needed."""
    for folder in {d.destination.parent for d in downloads}:
        folder.mkdir(parents=True, exist_ok=True)
    gate = asyncio.Semaphore(in_flight)

    async def one(item: Download) -> None:
        async with gate:
            try:
                await download_one(item, on_bytes)
            except (BaseError, OSError) as exc:
                # The object's name, for a FailureReason that says which one could not be read.
                raise StoreError(f"cannot download {item.key!r}: {short_message(exc)}") from exc

    await asyncio.gather(*(one(d) for d in downloads))


async def download_one(item: Download, on_bytes: OnBytes = _ignore) -> None:
    if (s3 := ranged_store(item.store, item.size)) is not None:
        await download_ranged(s3, item.key, item.size, item.destination, on_bytes)
        return
    result = await obstore.get_async(item.store, item.key)
    if item.size <= WHOLE_READ_LIMIT:
        # One read and one unbuffered write: for small objects the streaming machinery (and a
        # buffered file object) costs more CPU than the bytes themselves.
        data = await result.bytes_async()
        _write_whole(item.destination, memoryview(data))
        on_bytes(len(data))
        return
    with open(item.destination, "wb") as out:
        async for chunk in result.stream(min_chunk_size=1024 * 1024):
            out.write(chunk)
            on_bytes(len(chunk))


def _write_whole(path: Path, data: memoryview) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        while data:
            data = data[os.write(fd, data) :]
    finally:
        os.close(fd)


async def upload_file(path: Path, target: Location, on_bytes: OnBytes = _ignore) -> None:
    """Upload `path` to `target.key`; the object appears whole or not at all."""
    try:
        size = path.stat().st_size
        if size <= SINGLE_PUT_LIMIT:
            data = path.read_bytes()
            await obstore.put_async(target.store, target.key, data, use_multipart=False)
            on_bytes(size)
            return
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            await put_in_parts(target, fd, on_bytes, parts_in_flight=8)
        finally:
            os.close(fd)
    except (BaseError, OSError) as exc:
        raise upload_error(target, exc) from exc


def upload_error(target: Location, exc: BaseException) -> StoreError:
    """The error of an upload that could not be made, for a FailureReason: which object, and
    why in a line."""
    return StoreError(f"cannot upload {target.uri}: {short_message(exc)}")


@translate_errors
async def read_object(location: Location) -> bytes:
    result = await obstore.get_async(location.store, location.key)
    return bytes(await result.bytes_async())


@translate_errors
async def delete_keys(store: ObjectStore, keys: Sequence[str]) -> None:
    if keys:
        await obstore.delete_async(store, list(keys))
