"""The command line loads only what a command needs: importing it (what every command, `--help`
and `openmaker env` included, pays for) loads neither the job machinery nor the transfer code,
progress bars or demo; those load in the commands that use them (openmaker/cli/app.py)."""

from __future__ import annotations

import json
import subprocess
import sys

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


def test_importing_the_cli_loads_no_command_s_machinery() -> None:
    script = "import json, sys\nimport openmaker.cli.app\nprint(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    loaded = set(json.loads(out))
    assert "openmaker.cli.app" in loaded
    early = [name for name in LATER if name in loaded]
    assert early == [], f"importing the CLI loads {early}"
