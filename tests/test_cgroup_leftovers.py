"""What a killed worker's cgroups leave is removed by the sweep, nested ones too (an instance's
containers of an inference pipeline), and what a process is still in stays."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from openmaker.runtime.limits import cgroup_root
from openmaker.serving import limits as serving_limits
from openmaker.training.host import limits as training_limits

CONTROLLER = "pids"


def _home_folder(home: Path) -> Path:
    found = serving_limits._home_cgroups(home, CONTROLLER)
    assert found is not None
    return found


pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or cgroup_root(CONTROLLER) is None,
    reason="needs root and a pids cgroup hierarchy",
)


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    # Whatever a failing test left, deepest first.
    folder = _home_folder(tmp_path)
    for below in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if below.is_dir():
            below.rmdir()
    if folder.is_dir():
        folder.rmdir()


def test_an_endpoints_nested_cgroups_are_removed_and_a_used_one_stays(home: Path) -> None:
    owner = _home_folder(home) / "endpoint:ep-1"
    containers = [owner / "i-1" / f"container-{n}" for n in (1, 2)]
    for container in containers:
        container.mkdir(parents=True)
    held = subprocess.Popen(["sleep", "60"])
    try:
        (containers[0] / "cgroup.procs").write_text(str(held.pid))
        serving_limits.remove_owner_cgroups(home, "endpoint:ep-1")
        # The one with a process and those above it stay; its empty sibling goes.
        assert containers[0].is_dir() and not containers[1].exists()
    finally:
        held.kill()
        held.wait()
    serving_limits.remove_owner_cgroups(home, "endpoint:ep-1")
    assert not owner.exists()


def test_a_jobs_nested_cgroups_are_removed_and_the_homes_stays_for_another(home: Path) -> None:
    folder = _home_folder(home)
    (folder / "job-a" / "algo-1" / "below").mkdir(parents=True)
    (folder / "job-b" / "algo-1").mkdir(parents=True)
    training_limits.remove_job_cgroups(home, "job-a")
    assert not (folder / "job-a").exists()
    assert (folder / "job-b" / "algo-1").is_dir()
    training_limits.remove_job_cgroups(home, "job-b")
    assert not folder.exists()
