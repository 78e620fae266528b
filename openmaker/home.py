"""OPENMAKER_HOME is private: it holds credentials, request environments and every job's logs.

The folder is 0700 and the files openmaker keeps directly in it 0600, whoever made them and
whatever the umask was; a home made by an earlier openmaker is tightened when it is opened.
"""

from __future__ import annotations

import os
import stat
from functools import cache
from pathlib import Path

FOLDER_MODE = 0o700
FILE_MODE = 0o600


class HomeError(Exception):
    """Something in OPENMAKER_HOME cannot be used; the message names it and says what to do."""


@cache
def prepare_home(home: Path) -> None:
    """Make `home` if needed and take away every permission of group and others on it and
    its files (once per process)."""
    home.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
    info = home.stat()
    # A home pointed at a folder openmaker does not own, or a shared one (/tmp), is left as it is.
    if info.st_uid != os.geteuid() or info.st_mode & stat.S_ISVTX:
        return
    _tighten(home, info.st_mode, FOLDER_MODE)
    with os.scandir(home) as entries:
        for entry in entries:
            if entry.is_file(follow_symlinks=False):
                _tighten(Path(entry.path), entry.stat(follow_symlinks=False).st_mode, FILE_MODE)


def _tighten(path: Path, mode: int, allowed: int) -> None:
    wanted = stat.S_IMODE(mode) & allowed
    if wanted != stat.S_IMODE(mode):
        os.chmod(path, wanted, follow_symlinks=False)
