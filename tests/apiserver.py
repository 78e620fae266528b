"""A real `openmaker server` process for tests: its own home, free ports, its client variables."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from unittest import mock

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.s3server import free_port


@dataclass(frozen=True)
class ApiServer:
    home: Path
    env: dict[str, str]  # what `openmaker env` prints, as a mapping
    process: subprocess.Popen[bytes]

    def client(self, service: Literal["sagemaker", "logs", "s3"], **overrides: Any) -> Any:
        settings: dict[str, Any] = {
            "region_name": self.env["AWS_REGION"],
            "aws_access_key_id": self.env["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": self.env["AWS_SECRET_ACCESS_KEY"],
        }
        variable = {
            "sagemaker": "AWS_ENDPOINT_URL_SAGEMAKER",
            "logs": "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS",
            "s3": "AWS_ENDPOINT_URL_S3",
        }[service]
        settings["endpoint_url"] = self.env[variable]
        settings.update(overrides)
        return boto3.client(service, **settings)


def openmaker_command() -> list[str]:
    return [sys.executable, "-m", "openmaker.cli.app"]


@contextmanager
def running_api_server(home: Path, **extra_env: str) -> Iterator[ApiServer]:
    """`openmaker server` on free ports over `home`, with the embedded store as its S3; local
    paths are allowed in requests under the folder holding `home` unless `extra_env` says."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "OPENMAKER_")) or k == "OPENMAKER_SANDBOX"
    }
    env.update({"OPENMAKER_HOME": str(home), "OPENMAKER_STOP_GRACE_SECONDS": "3"})
    # The tests' images and local data sit beside the home (which stays refused).
    env["OPENMAKER_FILE_ROOTS"] = str(home.parent)
    env.update(extra_env)
    port, s3_port = free_port(), free_port()
    log = open(home.parent / f"{home.name}-server.log", "ab")  # noqa: SIM115 - kept for the run
    process = subprocess.Popen(
        [*openmaker_command(), "server", "--port", str(port), "--s3-port", str(s3_port)],
        env=env,
        stdout=log,
        stderr=log,
    )
    try:
        record = home / "server.json"
        # Generous: the suite runs three test processes at once on two cores.
        deadline = time.monotonic() + 90
        # A record left by a server killed before this one names another process.
        while _recorded_pid(record) != process.pid:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"openmaker server did not start; see {log.name}")
            time.sleep(0.05)
        printed = subprocess.run(
            [*openmaker_command(), "env"], env=env, check=True, capture_output=True, text=True
        ).stdout
        variables = {}
        for line in printed.splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            variables[name] = shlex.split(value)[0]
        server = ApiServer(home, variables, process)
        try:
            yield server
        finally:
            if process.poll() is None:  # what failed tests left running ends with the server
                stop_all(server.client("sagemaker"), _unended(server.client("sagemaker")))
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def stop_all(sagemaker: Any, names: Iterable[str], timeout: float = 120) -> None:
    """Stop each job of `names` that has not ended (or was never made) and wait for each to end:
    what a test that starts jobs runs in `finally`, so that none is left looping."""
    names = list(names)
    for name in names:
        try:
            sagemaker.stop_training_job(TrainingJobName=name)
        except ClientError as error:  # ended already, or never made
            code = error.response["Error"]["Code"]
            assert code in ("ValidationException", "ResourceNotFound"), error
    deadline = time.monotonic() + timeout
    for name in names:
        while True:
            try:
                described = sagemaker.describe_training_job(TrainingJobName=name)
            except ClientError as error:
                assert error.response["Error"]["Code"] == "ResourceNotFound", error
                break
            if described["TrainingJobStatus"] in ("Completed", "Failed", "Stopped"):
                break
            assert time.monotonic() < deadline, f"{name} did not end once stopped"
            time.sleep(0.2)


def _unended(sagemaker: Any) -> list[str]:
    pages = sagemaker.get_paginator("list_training_jobs").paginate()
    return [
        job["TrainingJobName"]
        for page in pages
        for job in page["TrainingJobSummaries"]
        if job["TrainingJobStatus"] in ("InProgress", "Stopping")
    ]


def _recorded_pid(record: Path) -> int | None:
    try:
        return int(json.loads(record.read_text())["pid"])
    except (FileNotFoundError, ValueError, KeyError):
        return None


def signed_post(
    server: ApiServer,
    target: str,
    body: bytes,
    send: bytes | None = None,
    at: str | None = None,
) -> tuple[int, Any]:
    """POST `body` to the API signed as botocore signs, with the server's key pair: (HTTP
    status, the decoded JSON answer). For requests no client would build: `send` replaces the
    body after signing, `at` signs at another time (X-Amz-Date, e.g. "20200101T000000Z")."""
    service = "logs" if target.startswith("Logs_") else "sagemaker"
    url = server.env["AWS_ENDPOINT_URL_SAGEMAKER"] + "/"
    request = AWSRequest(
        method="POST",
        url=url,
        data=body,
        headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": target},
    )
    credentials = Credentials(server.env["AWS_ACCESS_KEY_ID"], server.env["AWS_SECRET_ACCESS_KEY"])
    signer = SigV4Auth(credentials, service, server.env["AWS_REGION"])
    if at is None:
        signer.add_auth(request)
    else:
        when = datetime.strptime(at, "%Y%m%dT%H%M%SZ")
        with mock.patch("botocore.auth.get_current_datetime", return_value=when):
            signer.add_auth(request)
    return raw_post(url, body if send is None else send, dict(request.headers.items()))


def raw_post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    call = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(call, timeout=30) as answer:
            return answer.status, json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")
