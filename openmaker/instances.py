"""Instance types as SageMaker sizes them, and the GPUs this machine has.

Both the jobs layer (capacity, placement) and a host (its opening notes) read these: they live
below both, so that neither imports the other for them.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from importlib import resources

GIB = 1024**3


@dataclass(frozen=True)
class Resources:
    cpus: int
    memory: int  # bytes
    gpus: int


@cache
def catalog() -> dict[str, Resources]:
    """The instance types of the data file shipped with openmaker."""
    text = resources.files("openmaker").joinpath("instance_types.csv").read_text()
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    return {
        row["instance_type"]: Resources(
            int(row["vcpus"]), int(float(row["memory_gib"]) * GIB), int(row["gpus"])
        )
        for row in rows
    }


def detect_gpus() -> tuple[str, ...]:
    """The indexes of the NVIDIA GPUs `nvidia-smi` lists (none without it)."""
    if shutil.which("nvidia-smi") is None:
        return ()
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(line.strip() for line in out.splitlines() if line.strip())
