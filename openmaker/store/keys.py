"""Mapping object keys to local paths without ever leaving the destination folder."""

from __future__ import annotations

from pathlib import Path, PurePosixPath


class UnsafeKeyError(ValueError):
    """A key would land outside the folder it is downloaded into."""


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
    pure = PurePosixPath(relative)
    if not relative or pure.is_absolute() or ".." in pure.parts or "\x00" in relative:
        raise UnsafeKeyError(f"object path {relative!r} would land outside {root}")
    return root.joinpath(*pure.parts)
