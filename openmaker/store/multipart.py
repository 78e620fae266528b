"""Multipart uploads that begin again when the server loses them.

A server that restarts (rclone's keeps its multipart uploads in memory) forgets the uploads in
progress: once it is back, a part or the completion answers 404 NoSuchUpload, and so does
obstore's abort of the upload. Nothing of such an upload is visible under its key, so it is
begun again from the first byte, with obstore retrying each request as before.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable

import obstore
from obstore.exceptions import BaseError

from openmaker.store.location import Location

OnBytes = Callable[[int], None]

UPLOAD_PART_SIZE = 16 * 1024 * 1024
# Attempts in all at one upload that the server keeps losing.
UPLOAD_ATTEMPTS = 5


class UploadLost(OSError):
    """The server lost a multipart upload each time it was started."""


def upload_lost(exc: BaseException) -> bool:
    """Whether `exc` says the server no longer knows the multipart upload (it restarted, say):
    the part, the completion or obstore's abort of it answered 404 NoSuchUpload."""
    return isinstance(exc, (BaseError, OSError)) and "NoSuchUpload" in str(exc)


async def put_in_parts(
    target: Location,
    fd: int,
    on_bytes: OnBytes,
    parts_in_flight: int,
    before_last_part: Callable[[], None] = lambda: None,
) -> None:
    """A multipart upload of the file open as `fd`, started again from its first byte when the
    server loses it: a server that is back within the retry limit (obstore retries each
    request until then) answers that it knows no such upload, and nothing of it is visible,
    so a new one is begun. `before_last_part` may raise to abandon the upload (never
    completed). Each byte is reported once, however often it is sent."""
    reported = 0

    def report(offset: int) -> None:
        nonlocal reported
        if offset > reported:
            on_bytes(offset - reported)
            reported = offset

    async def parts() -> AsyncIterator[bytes]:
        # Reads at offsets, never through a shared file position: a lost attempt's last read
        # may still be running when the next attempt begins.
        offset = 0
        while chunk := await asyncio.to_thread(os.pread, fd, UPLOAD_PART_SIZE, offset):
            yield chunk
            offset += len(chunk)
            report(offset)
        before_last_part()

    for attempt in range(1, UPLOAD_ATTEMPTS + 1):
        try:
            await obstore.put_async(
                target.store,
                target.key,
                parts(),
                chunk_size=UPLOAD_PART_SIZE,
                max_concurrency=parts_in_flight,
            )
            return
        except (BaseError, OSError) as exc:
            if not upload_lost(exc):
                raise
            if attempt == UPLOAD_ATTEMPTS:
                raise UploadLost(
                    f"the object store lost the multipart upload {UPLOAD_ATTEMPTS} times in a row"
                ) from exc
