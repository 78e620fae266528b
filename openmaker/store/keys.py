"""Mapping object keys to local paths without ever leaving the destination folder."""

from __future__ import annotations

import os
from pathlib import Path

# Linux's limits on a file name (NAME_MAX) and on a path handed to a system call (PATH_MAX).
_NAME_MAX = 255
_PATH_MAX = 4096


class UnsafeKeyError(ValueError):
    """A key cannot be held as a file: it would land outside the folder it is downloaded into,
    or no file could have its name."""


def relative_to_prefix(key: str, prefix: str) -> str:
    """The local path of `key` for a channel whose URI ends in `prefix`.

    With prefix `data/train`: `data/train/x.csv` → `x.csv` (the prefix names a folder),
    `data/train-a.csv` → `train-a.csv` and `data/train2/y.csv` → `train2/y.csv` (the key is
    cut at the prefix's last `/`).
    """
    if not key.startswith(prefix):
        raise UnsafeKeyError(f"key {key!r} is not under prefix {prefix!r}")
    cut = prefix.rfind("/") + 1
    rest = key[cut:]
    head, sep, tail = rest.partition("/")
    # The prefix's own last segment is not kept as a folder when the key continues below it.
    if sep and prefix[cut:] == head:
        return tail
    return rest


def safe_destination(root: Path, relative: str) -> Path:
    """`root / relative`, refusing anything that is absolute, empty or climbs out with `..`."""
    joined = checked_relative(root, relative)
    return root / joined if joined else root


def checked_relative(root: Path, relative: str) -> str:
    """`relative` as it lands below `root` (empty and `.` segments dropped), refused as
    `safe_destination` refuses it; no Path made (a listing checks every object)."""
    # Plain string work: this runs for every object of a channel (a Path per segment cost more
    # than the rest of a local channel's setup).
    parts = [part for part in relative.split("/") if part not in ("", ".")]
    if not relative or relative.startswith("/") or ".." in parts or "\x00" in relative:
        raise UnsafeKeyError(f"object path {relative!r} would land outside {root}")
    joined = "/".join(parts)
    encoded = os.fsencode(joined)
    # SageMaker downloads whatever S3 holds; a name Linux cannot hold must fail clearly, not as
    # an error in the middle of the download.
    if len(encoded) > _NAME_MAX and any(len(p) > _NAME_MAX for p in encoded.split(b"/")):
        raise UnsafeKeyError(
            f"object path {_shown(relative)} has a segment longer than {_NAME_MAX} bytes, "
            "which no file name can be"
        )
    if len(os.fsencode(root)) + 1 + len(encoded) >= _PATH_MAX:
        raise UnsafeKeyError(
            f"object path {_shown(relative)} is too long for a file path "
            f"({_PATH_MAX} bytes at most)"
        )
    return joined


def _shown(relative: str, limit: int = 100) -> str:
    """The path as a FailureReason can hold it: quoted, long ones cut."""
    return repr(relative) if len(relative) <= limit else repr(relative[:limit]) + "…"
