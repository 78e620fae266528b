"""Files other processes read while they are rewritten: written beside, then renamed into
place, so that a reader finds the old file or the new one, never a part of one."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path


def replace_whole(path: Path, data: bytes | str, mode: int = 0o666) -> None:
    """`data` as `path`. The temporary beside it is named by process and thread (several write
    one file) and made anew with `mode` (less the umask): never a file left by another, never
    wider than `mode`."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data.encode() if isinstance(data, str) else data)
    os.replace(temporary, path)
