"""Uploading a file that the code may be rewriting while it is read.

An object is made only from bytes read while the file's size, mtime, ctime and inode stayed
the same; otherwise nothing is written (a multipart upload is abandoned before it completes)
and the caller tries again later. store.upload_file cannot refuse a file that changed under
it, hence this variant for files the code still owns (checkpoints).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import obstore
from obstore.exceptions import BaseError

from openmaker.store import Location
from openmaker.store.errors import translate_errors
from openmaker.store.multipart import OnBytes, put_in_parts
from openmaker.store.transfer import SINGLE_PUT_LIMIT, upload_error

# What identifies one version of a file's content: size, mtime (ns), inode.
Signature = tuple[int, int, int]


def signature(status: os.stat_result) -> Signature:
    return (status.st_size, status.st_mtime_ns, status.st_ino)


def _same(before: os.stat_result, after: os.stat_result) -> bool:
    return signature(before) == signature(after) and before.st_ctime_ns == after.st_ctime_ns


class _Changed(Exception):
    """The file changed while it was read: the upload is abandoned."""


@translate_errors
async def upload_snapshot(path: Path, target: Location, on_bytes: OnBytes) -> Signature | None:
    """Upload `path` if it stays the same while read: the uploaded version's signature, or None
    when it changed, vanished or is no regular file (never followed through a link)."""
    try:
        # O_NONBLOCK: a FIFO the code left there must not block the sync.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        if path.is_symlink():
            return None
        raise
    return await upload_open(fd, target, on_bytes)


async def upload_open(fd: int, target: Location, on_bytes: OnBytes) -> Signature | None:
    """upload_snapshot() of a file already opened (and closed here): None when it is no regular
    file or changed while read."""
    try:
        return await _upload_open(fd, target, on_bytes)
    except (BaseError, OSError) as exc:
        raise upload_error(target, exc) from exc


async def _upload_open(fd: int, target: Location, on_bytes: OnBytes) -> Signature | None:
    with os.fdopen(fd, "rb", buffering=0) as source:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            return None
        if before.st_size <= SINGLE_PUT_LIMIT:
            data = source.read()
            if not _same(before, os.fstat(fd)) or len(data) != before.st_size:
                return None
            await obstore.put_async(target.store, target.key, data, use_multipart=False)
            on_bytes(len(data))
            return signature(before)

        def unchanged() -> None:
            # Raised before the last part is sent: the multipart upload is never completed.
            if not _same(before, os.fstat(fd)):
                raise _Changed

        try:
            # Parts held in memory at once, per file (several files may go up together).
            await put_in_parts(target, fd, on_bytes, parts_in_flight=4, before_last_part=unchanged)
        except _Changed:
            return None
        return signature(before)
