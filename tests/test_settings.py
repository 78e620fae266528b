"""Settings: read once by openmaker/settings.py, checked there, and passed down explicitly."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import openmaker
from openmaker.jobs.queue import LAUNCH_FILE, save_launch
from openmaker.runtime.layers import hidden_paths
from openmaker.settings import DEFAULT_HIDDEN, from_json, load_settings, to_json
from openmaker.store import code_store_environment, store_environment

PACKAGE = Path(openmaker.__file__).parent
# The modules that may read the process's environment, each with why.
READERS_ALLOWED = {
    # The one place openmaker's own settings are read.
    "settings.py",
    # Loaded by the user's botocore clients (`openmaker env`): their endpoint variables are the
    # clients' own configuration, read in the client's process.
    "botocore_plugin.py",
    # rclone's auth proxy, a process of its own: its environment is what
    # openmaker/api/s3_endpoint.py gives it, not the user's settings.
    "api/gate_proxy.py",
    # A job's code, run in the sandbox: SageMaker's contract is its environment.
    "demo/train_digits.py",
    # The toolkit's framework module, run in the job's sandbox: it sets the job's own
    # distribution variables (MASTER_ADDR, TF_CONFIG) as SageMaker's framework containers do.
    "training/host/launcher.py",
    # The framework serving stand-in, run in an endpoint's sandbox: the container contract
    # (SAGEMAKER_PROGRAM, SAGEMAKER_BIND_TO_PORT, the toolkits' variables) is its environment.
    "serving/framework/defaults.py",
    "serving/framework/handlers.py",
    "serving/framework/server.py",
    # Sets, not reads: Ray takes its own settings from the process's environment, and its
    # crash handler (which would take a worker's SIGTERM) must be off before Ray loads.
    "training/ray_cluster.py",
}


def _environment_reads(path: Path) -> list[int]:
    """The lines of `path` that reach os.environ, os.environb or os.getenv, however imported."""
    names = {"environ", "environb", "getenv"}
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        attribute = isinstance(node, ast.Attribute) and node.attr in names
        imported = (
            isinstance(node, ast.ImportFrom)
            and node.module == "os"
            and bool({a.name for a in node.names} & names)
        )
        if attribute or imported:
            lines.append(getattr(node, "lineno", 0))
    return lines


def test_no_module_but_the_settings_reads_the_environment() -> None:
    found = {
        str(path.relative_to(PACKAGE)): lines
        for path in sorted(PACKAGE.rglob("*.py"))
        if (lines := _environment_reads(path))
    }
    unexpected = {name: lines for name, lines in found.items() if name not in READERS_ALLOWED}
    assert not unexpected
    # The allow-list names only modules that still need it.
    assert set(found) == READERS_ALLOWED


BAD_VALUES = [
    ("OPENMAKER_CAPACITY", "loose"),
    ("OPENMAKER_CPUS", "lots"),
    ("OPENMAKER_MEMORY_GIB", "-1"),
    ("OPENMAKER_GPUS", "1.5"),
    ("OPENMAKER_FILE_ROOTS", "data"),
    ("OPENMAKER_LOG_LIMIT_MB", "big"),
    ("OPENMAKER_PIDS_LIMIT", "0"),
    ("OPENMAKER_SANDBOX", "off"),
    ("OPENMAKER_STOP_GRACE_SECONDS", "soon"),
    ("OPENMAKER_KEEP_JOB_FILES", "yes"),
    ("OPENMAKER_STORE_RETRY_SECONDS", "nan"),
    ("OPENMAKER_DB_BUSY_SECONDS", "-5"),
    ("OPENMAKER_S3_GATE", "true"),
    ("AWS_ENDPOINT_URL_S3", "localhost:9000"),
]


def _openmaker(home: Path, variable: str, value: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OPENMAKER_HOME": str(home), variable: value}
    return subprocess.run(
        [sys.executable, "-m", "openmaker.cli.app", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(("variable", "value"), BAD_VALUES)
def test_a_bad_setting_stops_train_in_one_line_naming_it(
    tmp_path: Path, home: Path, variable: str, value: str
) -> None:
    run = _openmaker(home, variable, value, "train", "--image", str(tmp_path), "--no-wait")
    assert run.returncode == 1, run
    assert "Traceback" not in run.stderr
    assert variable in run.stderr and repr(value) in run.stderr, run.stderr
    assert not (home / "openmaker.db").exists()  # nothing started


def test_a_bad_setting_stops_the_server_before_it_listens(home: Path) -> None:
    run = _openmaker(home, "OPENMAKER_S3_GATE", "yes", "server", "--port", "0", "--s3-port", "0")
    assert run.returncode == 1, run
    assert "Traceback" not in run.stderr
    assert "OPENMAKER_S3_GATE" in run.stderr and "'yes'" in run.stderr
    assert not (home / "server.json").exists()


def test_the_s3_server_and_region_are_read_as_aws_clients_read_them() -> None:
    settings = load_settings(
        {"AWS_ENDPOINT_URL": "http://catch-all:9000/", "AWS_DEFAULT_REGION": "eu-west-1"}
    )
    assert settings.region == "eu-west-1"
    assert settings.store.endpoint is not None
    assert settings.store.endpoint.url == "http://catch-all:9000"
    assert settings.store.endpoint.region == "eu-west-1"
    # The service's own variable and AWS_REGION win over the catch-all ones.
    settings = load_settings(
        {
            "AWS_ENDPOINT_URL": "http://catch-all:9000",
            "AWS_ENDPOINT_URL_S3": "http://s3:9000",
            "AWS_REGION": "ap-south-1",
            "AWS_DEFAULT_REGION": "eu-west-1",
            "AWS_ACCESS_KEY_ID": "key",
            "AWS_SECRET_ACCESS_KEY": "secret",
            "AWS_SESSION_TOKEN": "token",
        }
    )
    assert settings.region == "ap-south-1"
    assert store_environment(settings.store) == {
        "AWS_ENDPOINT_URL_S3": "http://s3:9000",
        "AWS_ACCESS_KEY_ID": "key",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_SESSION_TOKEN": "token",
    }
    # A job the CLI runs gets the same; a server's job, only its gate's address (its worker
    # adds a key of the job's own).
    assert code_store_environment(settings.store) == store_environment(settings.store)
    gated = from_json({**to_json(settings), "gate_url": "http://127.0.0.1:7071"})
    assert code_store_environment(gated.store) == {"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:7071"}


def test_sandbox_hide_replaces_or_adds_to_what_the_sandbox_shows_empty(tmp_path: Path) -> None:
    secret = tmp_path / "secret.key"
    secret.write_text("x")
    assert load_settings({}).sandbox_hide == DEFAULT_HIDDEN
    replaced = load_settings({"OPENMAKER_SANDBOX_HIDE": f"{tmp_path}/*.key"}).sandbox_hide
    assert hidden_paths(replaced) == [secret]
    added = load_settings({"OPENMAKER_SANDBOX_HIDE": f"+{secret}"}).sandbox_hide
    assert added == (*DEFAULT_HIDDEN, str(secret))
    assert hidden_paths(load_settings({"OPENMAKER_SANDBOX_HIDE": ""}).sandbox_hide) == []


def test_a_jobs_launch_record_keeps_its_settings_but_not_the_servers_key_pair(
    tmp_path: Path,
) -> None:
    settings = load_settings(
        {
            "OPENMAKER_HOME": str(tmp_path / "home"),
            "OPENMAKER_STOP_GRACE_SECONDS": "7",
            "OPENMAKER_ACCESS_KEY_ID": "server-key",
            "OPENMAKER_SECRET_ACCESS_KEY": "server-secret",
            "AWS_ENDPOINT_URL_SAGEMAKER": "http://127.0.0.1:7070",
        }
    )
    assert settings.server_key_pair == ("server-key", "server-secret")
    save_launch(settings, "job")
    text = (settings.jobs_dir / "job" / LAUNCH_FILE).read_text()
    assert "server-secret" not in text and "server-key" not in text
    kept = from_json(json.loads(text)["settings"])
    assert kept == settings.for_jobs()
    assert kept.stop_grace_seconds == 7
