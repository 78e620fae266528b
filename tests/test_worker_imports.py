"""A worker starts without the database layer: SQLAlchemy (most of its start-up time) loads in
the background while the job's hosts prepare (openmaker/jobs/recorder.py)."""

from __future__ import annotations

import json
import subprocess
import sys

# The modules a worker process imports before it has its job (openmaker/jobs/executor.py
# starts `python -m openmaker.jobs.worker_process`, whose main imports the worker).
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
