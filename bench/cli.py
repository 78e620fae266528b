"""The command line's own start: `openmaker jobs list` and `openmaker --help` as a user types
them (a new process each, from its start to its exit), against `python -c pass`, the floor any
Python command stands on. The no-op `openmaker train --wait` is in bench/overhead.py."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

from bench.stats import Timings, timed

LIST_TARGET_SECONDS = 0.3


def run(quick: bool) -> list[str]:
    """Uses the OPENMAKER_HOME of this process (its jobs, if any, are listed)."""
    runs = 5 if quick else 15
    print(f"CLI start ({runs} runs of each command)", flush=True)
    openmaker = str(Path(sys.executable).parent / "openmaker")
    # In the CLI's own process (no server), as on a machine without `openmaker server`.
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL_SAGEMAKER"}
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "openmaker --help": [openmaker, "--help"],
        "openmaker jobs list": [openmaker, "jobs", "list"],
    }
    seconds: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        # Interleaved, so that a busy moment of the machine falls on every command alike.
        for name, command in commands.items():
            _, took = timed(functools.partial(_run, command, env))
            seconds[name].append(took)
    floor = Timings(seconds["python -c pass"])
    lines = []
    for name in ("openmaker --help", "openmaker jobs list"):
        timings = Timings(seconds[name])
        verdict = ""
        if name == "openmaker jobs list":
            ok = "ok" if timings.median < LIST_TARGET_SECONDS else "MISSED"
            verdict = f"; target < {LIST_TARGET_SECONDS} s: {ok}"
        lines.append(
            f"`{name}`: median {timings.median:.3f} s, {timings.median / floor.median:.1f}x "
            f"`python -c pass` ({floor.median:.3f} s){verdict}"
        )
        lines.append(f"  {timings.describe()}")
    return lines


def _run(command: list[str], env: dict[str, str]) -> None:
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
