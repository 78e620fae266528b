"""openmaker/files.py: a file rewritten whole, never wider than asked, never through a link."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

from openmaker.files import replace_whole


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def test_a_private_file_is_never_wider_than_asked_nor_written_through_a_link(
    tmp_path: Path,
) -> None:
    path = tmp_path / "token.json"
    # Left by another: a world-readable temporary, and a link where the next one would go.
    outside = tmp_path / "outside"
    outside.write_text("untouched")
    _temporary(path).symlink_to(outside)
    replace_whole(path, '{"auth": "x"}', 0o600)
    assert path.read_text() == '{"auth": "x"}'
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert outside.read_text() == "untouched"
    assert not _temporary(path).exists()
    replace_whole(path, b"again", 0o600)
    assert path.read_bytes() == b"again"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
