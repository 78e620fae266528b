"""A worker starts without the database layer: SQLAlchemy (most of its start-up time) loads in
the background while the job's hosts prepare (openmaker/jobs/recorder.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from openmaker.jobs.executor import Order
from openmaker.settings import Settings, to_json

# The modules a worker process imports before it has its job (openmaker/jobs/executor.py
# starts `python -m openmaker.jobs.worker_process openmaker.training.worker`, which imports
# that kind's runner while it waits).
WORKER_MODULES = ("openmaker.jobs.worker_process", "openmaker.training.worker")
HEAVY = ("sqlalchemy", "botocore", "boto3")


def test_starting_a_worker_imports_no_sqlalchemy() -> None:
    script = (
        "import importlib, json, sys\n"
        f"for name in {WORKER_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    loaded = json.loads(out)
    assert "openmaker.training.worker" in loaded
    heavy = [name for name in loaded if name.split(".")[0] in HEAVY]
    assert heavy == [], f"a starting worker imports {heavy[:5]}"


def test_a_worker_runs_only_openmakers_own_runners(tmp_path: Path) -> None:
    """The order names the module that runs its kind: one outside openmaker is refused, before
    it is imported."""
    order = Order("TrainingJob", "json.tool", "j", "arn", {})
    message = {**order.to_json(), "settings": to_json(Settings(tmp_path, "us-east-1", "0"))}
    (tmp_path / "jobs" / "j").mkdir(parents=True)
    done = subprocess.run(
        [sys.executable, "-m", "openmaker.jobs.worker_process"],
        input=json.dumps(message),
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    log = (tmp_path / "jobs" / "j" / "worker.log").read_text()
    assert "not a runner of openmaker's: json.tool" in log
    assert Order.from_json(order.to_json()) == order
