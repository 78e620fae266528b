"""The command line loads only what a command needs: importing it (what every command, `--help`
and `openmaker env` included, pays for) loads neither the job machinery nor the transfer code,
progress bars or demo; those load in the commands that use them (openmaker/cli/app.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest

from openmaker.cli.remote import RemoteJobs

# Each is what one kind of command needs, and nothing the CLI's import does.
LATER = (
    "sqlalchemy",  # in-process jobs (TrainingJobs)
    "boto3",  # jobs through a server (RemoteJobs)
    "rich.progress",  # following a job
    "openmaker.training.service",
    "openmaker.training.host.outputs",  # packing a script's source folder
    "openmaker.demo.run",
    "botocore",  # the API model: checking a request (openmaker.shapes.training)
    "openmaker.store.transfer",  # moving objects (asyncio, obstore's stores)
)

# Runs the command in-process, then prints the modules it loaded (at exit: typer exits).
COMMAND = """import atexit, json, sys
atexit.register(lambda: print(json.dumps(sorted(sys.modules)), file=sys.stderr))
sys.argv = ["openmaker", *sys.argv[1:]]
from openmaker.cli.app import main
main()
"""


def _loaded(script: str, *args: str, env: dict[str, str] | None = None) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return set(json.loads(done.stderr.splitlines()[-1] if args else done.stdout))


def test_importing_the_cli_loads_no_command_s_machinery() -> None:
    script = "import json, sys\nimport openmaker.cli.app\nprint(json.dumps(sorted(sys.modules)))\n"
    loaded = _loaded(script)
    assert "openmaker.cli.app" in loaded
    early = [name for name in LATER if name in loaded]
    assert early == [], f"importing the CLI loads {early}"


def test_listing_the_jobs_of_a_new_home_loads_no_job_machinery(tmp_path: Path) -> None:
    """A new machine has no database yet: nothing to list, and nothing to load for it."""
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL_SAGEMAKER"}
    env["OPENMAKER_HOME"] = str(tmp_path / "home")
    loaded = _loaded(COMMAND, "jobs", "list", env=env)
    early = [name for name in ("sqlalchemy", "botocore", "openmaker.jobs.db") if name in loaded]
    assert early == [], f"`openmaker jobs list` in a new home loads {early}"
    assert not (tmp_path / "home" / "openmaker.db").exists()


def test_jobs_through_a_server_make_each_client_when_used_from_plain_dicts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No call is made: a client is only built. botocore's own loader reads its models into
    OrderedDicts, about twice as slow as plain ones."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    jobs = RemoteJobs()
    assert "logs" not in vars(jobs) and "sagemaker" not in vars(jobs)
    model = jobs.sagemaker.meta.service_model
    assert "logs" not in vars(jobs)
    operations = model._service_description["operations"]  # what the loader read
    assert type(operations) is dict and not isinstance(operations, OrderedDict)
    assert model.operation_model("CreateTrainingJob").input_shape.name
