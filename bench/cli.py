"""The command line's own start: `openmaker jobs list` (in this process's home and in a new
one) and `openmaker --help` as a user types them (a new process each, from its start to its
exit), against `python -c pass`, the floor any Python command stands on; wall time and the
command's CPU time. The no-op `openmaker train --wait` is in bench/overhead.py."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.stats import Timings

LIST_TARGET_SECONDS = 0.3


def run(quick: bool) -> list[str]:
    """Uses the OPENMAKER_HOME of this process (its jobs, if any, are listed)."""
    runs = 5 if quick else 15
    print(f"CLI start ({runs} runs of each command)", flush=True)
    openmaker = str(Path(sys.executable).parent / "openmaker")
    # In the CLI's own process (no server), as on a machine without `openmaker server`.
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL_SAGEMAKER"}
    with tempfile.TemporaryDirectory(prefix="openmaker-bench-home-") as new:
        # A home no job ran in yet, as on a new machine: no database yet.
        new_home = {**env, "OPENMAKER_HOME": str(Path(new) / "home")}
        commands = {
            "python -c pass": ([sys.executable, "-c", "pass"], env),
            "openmaker --help": ([openmaker, "--help"], env),
            "openmaker jobs list": ([openmaker, "jobs", "list"], env),
            "openmaker jobs list (new home)": ([openmaker, "jobs", "list"], new_home),
        }
        wall: dict[str, list[float]] = {name: [] for name in commands}
        cpu: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(runs):
            # Interleaved, so that a busy moment of the machine falls on every command alike.
            for name, (command, environment) in commands.items():
                seconds, used = run_command(command, environment)
                wall[name].append(seconds)
                cpu[name].append(used)
    floor = Timings(wall["python -c pass"])
    lines = []
    for name in list(commands)[1:]:
        timings = Timings(wall[name])
        verdict = ""
        if name.startswith("openmaker jobs list"):
            ok = "ok" if timings.median < LIST_TARGET_SECONDS else "MISSED"
            verdict = f"; target < {LIST_TARGET_SECONDS} s: {ok}"
        lines.append(
            f"`{name}`: median {timings.median:.3f} s, {timings.median / floor.median:.1f}x "
            f"`python -c pass` ({floor.median:.3f} s){verdict}"
        )
        lines.append(f"  wall {timings.describe()}")
        lines.append(f"  CPU  {Timings(cpu[name]).describe()}")
    return lines


def run_command(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Runs `command` to its end: its wall seconds, and its CPU seconds (user and system, its
    own and those of any child it waited for)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise subprocess.CalledProcessError(process.returncode, command)
    return seconds, usage.ru_utime + usage.ru_stime
