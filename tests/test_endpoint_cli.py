"""`openmaker endpoints list / describe / invoke / delete` against a real server."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.apiserver import openmaker_command
from tests.test_endpoints import SERVE, Deployer, deployer, pytestmark, wait_until

__all__ = ["deployer", "pytestmark"]  # the fixture, and the skip without a sandbox


def test_the_cli_lists_describes_invokes_and_deletes(deployer: Deployer, tmp_path: Path) -> None:
    name = deployer.endpoint(deployer.model(SERVE, {"weights.txt": b"w\n"}))
    assert deployer.wait(name)["EndpointStatus"] == "InService"
    env = {**os.environ, **deployer.server.env}

    def cli(*args: str) -> str:
        done = subprocess.run(
            [*openmaker_command(), "endpoints", *args], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert name in cli("list")
    described = json.loads(cli("describe", name, "--json"))
    assert described["EndpointStatus"] == "InService"
    assert described["ProductionVariants"][0]["CurrentInstanceCount"] == 1
    assert "1 → 1" in cli("describe", name)
    request = tmp_path / "request.txt"
    request.write_bytes(b"data")
    cli("invoke", name, str(request), str(tmp_path / "answer.txt"), "--content-type", "text/plain")
    assert (tmp_path / "answer.txt").read_bytes() == b"w hello data"
    cli("delete", name)
    wait_until(lambda: deployer.gone(name), "the endpoint to go")
    missing = subprocess.run(
        [*openmaker_command(), "endpoints", "describe", name], env=env, capture_output=True
    )
    assert missing.returncode == 1 and b"Could not find endpoint" in missing.stderr
