"""Walking folders the code wrote, without following its symbolic links.

The code could leave a link to any file of the machine (`/opt/ml/model/x -> /etc/shadow`);
openmaker reads these folders outside the sandbox, so it must never follow one.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def regular_files(folder: Path) -> dict[str, Path]:
    """Regular files below `folder` by their POSIX path relative to it; links are skipped."""
    found: dict[str, Path] = {}
    for directory, _subdirs, names in os.walk(folder, followlinks=False):
        for name in names:
            path = Path(directory, name)
            if stat.S_ISREG(path.lstat().st_mode):
                found[path.relative_to(folder).as_posix()] = path
    return dict(sorted(found.items()))


def read_text_head(path: Path, limit: int) -> str | None:
    """The first `limit` characters of a regular file the code wrote, or None.

    Never through a link (it could name any file of the machine) and never from a FIFO or a
    device (a read could block forever)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as stream:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        # Up to 4 bytes a character in UTF-8.
        return stream.read(4 * limit).decode("utf-8", errors="replace")[:limit]
