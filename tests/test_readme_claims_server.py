"""README claims about `openmaker server` that no other test checked: its S3 endpoint's keys,
the owner-only files, the server over an outside S3 server, ListTrainingJobs pages, and the
CloudWatch Logs filter patterns and log groups. Each through a real server and boto3."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from openmaker.jobs.logs import LOG_GROUP
from openmaker.shapes.validate import validate_output
from tests.apiserver import ApiServer, running_api_server
from tests.helpers import make_image, request
from tests.s3server import S3Server

NO_RETRIES = Config(retries={"max_attempts": 1, "mode": "standard"})
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_ended(sagemaker: Any, names: list[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    for name in names:
        while sagemaker.describe_training_job(TrainingJobName=name)["TrainingJobStatus"] not in (
            "Completed", "Failed", "Stopped",
        ):  # fmt: skip
            assert time.monotonic() < deadline, f"{name} did not end"
            time.sleep(0.2)


def error_code(call: Any, status: int = 403) -> str:
    with pytest.raises(ClientError) as caught:
        call()
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    return str(caught.value.response["Error"]["Code"])


# --- "The S3 endpoint (`rclone serve s3`) takes the same key pair" --------------------------


def check_s3_takes_only(server: ApiServer, key_id: str, secret: str) -> None:
    """Through boto3: the pair works on the S3 endpoint; a wrong key or secret is refused and
    changes nothing."""
    right = server.client("s3", aws_access_key_id=key_id, aws_secret_access_key=secret)
    bucket = unique("keys")
    right.create_bucket(Bucket=bucket)
    right.put_object(Bucket=bucket, Key="kept", Body=b"kept")
    assert right.get_object(Bucket=bucket, Key="kept")["Body"].read() == b"kept"
    # The same pair signs the SageMaker API.
    server.client(
        "sagemaker", aws_access_key_id=key_id, aws_secret_access_key=secret
    ).list_training_jobs()

    wrong_key = server.client(
        "s3", aws_access_key_id="AKIAWRONGWRONGWRONG0", aws_secret_access_key=secret,
        config=NO_RETRIES,
    )  # fmt: skip
    wrong_secret = server.client(
        "s3", aws_access_key_id=key_id, aws_secret_access_key="x" * 40, config=NO_RETRIES
    )
    # rclone answers both with AccessDenied (AWS says InvalidAccessKeyId for an unknown key,
    # SignatureDoesNotMatch for a wrong secret).
    for client in (wrong_key, wrong_secret):
        code = "AccessDenied"
        assert error_code(client.list_buckets) == code
        assert error_code(lambda c=client: c.get_object(Bucket=bucket, Key="kept")) == code
        put = lambda c=client: c.put_object(Bucket=bucket, Key="kept", Body=b"overwritten")  # noqa: E731
        assert error_code(put) == code
        made = lambda c=client: c.put_object(Bucket=bucket, Key="new", Body=b"new")  # noqa: E731
        assert error_code(made) == code
        assert error_code(lambda c=client: c.create_bucket(Bucket=unique("made"))) == code
    assert right.get_object(Bucket=bucket, Key="kept")["Body"].read() == b"kept"
    listed = right.list_objects_v2(Bucket=bucket)["Contents"]
    assert [o["Key"] for o in listed] == ["kept"]


def test_the_s3_endpoint_takes_the_generated_key_pair_and_no_other(api_server: ApiServer) -> None:
    stored = json.loads((api_server.home / "credentials.json").read_text())
    pair = (stored["aws_access_key_id"], stored["aws_secret_access_key"])
    # What `openmaker env` prints is the pair in credentials.json.
    assert pair == (api_server.env["AWS_ACCESS_KEY_ID"], api_server.env["AWS_SECRET_ACCESS_KEY"])
    check_s3_takes_only(api_server, *pair)


def test_the_s3_endpoint_takes_a_configured_key_pair_and_no_other(tmp_path: Path) -> None:
    key, secret = "OMKCONFIGUREDS3KEY01", "configured-" + uuid.uuid4().hex
    keys = {"OPENMAKER_ACCESS_KEY_ID": key, "OPENMAKER_SECRET_ACCESS_KEY": secret}
    with running_api_server(tmp_path / "home", **keys) as server:
        check_s3_takes_only(server, key, secret)


# --- "credentials.json (readable by its owner only)", "launch.json, readable by its owner
# only" ---------------------------------------------------------------------------------------


def nobody_reads(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*NOBODY, "cat", str(path)], capture_output=True, text=True, cwd="/", check=False
    )


@pytest.fixture
def open_base() -> Iterator[Path]:
    """A folder any user may pass through (pytest's own temporary folders are root's alone):
    what keeps another user out below it is openmaker's doing."""
    base = Path(tempfile.mkdtemp(prefix="openmaker-owner-only-"))
    base.chmod(0o711)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_credentials_and_launch_files_are_readable_by_their_owner_only(
    open_base: Path, tmp_path: Path
) -> None:
    home = open_base / "home"
    with running_api_server(home) as server:
        sagemaker = server.client("sagemaker")
        name = unique("owner")
        program = make_image(open_base / "image", "#!/bin/sh\nexit 0\n")
        sagemaker.create_training_job(**request(name, str(program), f"s3://{unique('b')}/out"))
        try:
            credentials, launch = home / "credentials.json", home / "jobs" / name / "launch.json"
            for path in (credentials, launch):
                info = path.stat()
                assert stat.S_IMODE(info.st_mode) == 0o600, (path, oct(info.st_mode))
                assert info.st_uid == os.geteuid()
                # As openmaker leaves things, `nobody` cannot read them.
                refused = nobody_reads(path)
                assert refused.returncode != 0 and "Permission denied" in refused.stderr
            # The job's worker tightens the home when it opens it: let it end first.
            deadline = time.monotonic() + 120
            while sagemaker.describe_training_job(TrainingJobName=name)[
                "TrainingJobStatus"
            ] not in ("Completed", "Failed", "Stopped"):
                assert time.monotonic() < deadline, "the job did not end"
                time.sleep(0.1)
            # With every folder above opened to passing through, the files' own mode still
            # keeps `nobody` out, while a file others may read beside them is read.
            for folder in (home, home / "jobs", home / "jobs" / name):
                folder.chmod(folder.stat().st_mode | 0o711)
            readable = home / "jobs" / name / "readable.txt"
            readable.write_text("anyone")
            readable.chmod(0o644)
            assert nobody_reads(readable).stdout == "anyone"
            for path in (credentials, launch):
                refused = nobody_reads(path)
                assert refused.returncode != 0 and "Permission denied" in refused.stderr
                assert refused.stdout == ""
        finally:
            wait_ended(sagemaker, [name])


# --- "Started with AWS_ENDPOINT_URL_S3 set ... By default it then starts no endpoint of its
# own", "`openmaker env` prints no S3 address" -------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """`pid` and every process descended from it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children.get(current, [])
    return tree


def listening_ports(pid: int) -> set[int]:
    """TCP ports on which `pid` or a process descended from it listens."""
    sockets: set[str] = set()
    for process in process_tree(pid):
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{process}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        sockets.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in sockets:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


ENDPOINT_PROGRAMS = (b"rclone", b"openmaker.api.s3_front", b"openmaker.api.gate_proxy")


def endpoint_processes(pid: int) -> list[int]:
    """The processes of an embedded S3 endpoint (its front, rclone, the auth proxy) under pid."""
    found = []
    for process in process_tree(pid):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{process}/cmdline").read_bytes().split(b"\0")
            if any(program in arg for arg in argv for program in ENDPOINT_PROGRAMS):
                found.append(process)
    return found


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].rstrip("/"))


def test_a_server_over_an_outside_s3_server_starts_no_endpoint_and_says_so(
    api_server: ApiServer, s3_server: S3Server, tmp_path: Path
) -> None:
    # The embedded default, for contrast: the API and the S3 endpoint listen.
    embedded = listening_ports(api_server.process.pid)
    assert port_of(api_server.env["AWS_ENDPOINT_URL_SAGEMAKER"]) in embedded
    assert port_of(api_server.env["AWS_ENDPOINT_URL_S3"]) in embedded
    assert len(endpoint_processes(api_server.process.pid)) >= 2  # the front, rclone, ...

    home = tmp_path / "home"
    with running_api_server(home, **s3_server.env()) as server:
        api_port = port_of(server.env["AWS_ENDPOINT_URL_SAGEMAKER"])
        # Only the API listens; no process of an endpoint (front, rclone, auth proxy) runs.
        assert listening_ports(server.process.pid) == {api_port}
        assert endpoint_processes(server.process.pid) == []
        assert "AWS_ENDPOINT_URL_S3" not in server.env
        assert json.loads((home / "server.json").read_text())["s3_url"] is None
        # Clients reach the outside server directly with its own credentials.
        bucket = unique("outside")
        s3_server.make_bucket(bucket)
        server.client("sagemaker").list_training_jobs()
    said = (tmp_path / "home-server.log").read_text()
    assert f"S3: {s3_server.url}" in said, said
    assert "no S3 endpoint of openmaker's own" in said, said
    assert "S3 endpoint of the embedded store" not in said


# --- "ListTrainingJobs (... NextToken pages that neither repeat nor skip a job created
# meanwhile)" ----------------------------------------------------------------------------------


def pages_with_a_job_created_between(
    sagemaker: Any, create: Any, size: int, **query: Any
) -> list[str]:
    """Every name listed by `query` in pages of `size`, calling `create()` after the first."""
    listed: list[str] = []
    token: str | None = None
    first = True
    while True:
        page = sagemaker.list_training_jobs(
            MaxResults=size, **query, **({"NextToken": token} if token else {})
        )
        listed += [s["TrainingJobName"] for s in page["TrainingJobSummaries"]]
        if first:
            create()
            first = False
        token = page.get("NextToken")
        if not token:
            return listed


def test_next_token_pages_neither_repeat_nor_skip_a_job_created_between_pages(
    api_server: ApiServer, tmp_path: Path
) -> None:
    sagemaker = api_server.client("sagemaker")
    tag = uuid.uuid4().hex[:8]
    program = str(make_image(tmp_path / "image", "#!/bin/sh\nexit 0\n"))
    output = f"s3://{unique('pages')}/out"
    created: list[str] = []

    def create(name: str) -> None:
        sagemaker.create_training_job(**request(name, program, output))
        created.append(name)

    try:
        for letter in "bcd":
            create(f"p{tag}-{letter}")
        # Oldest first: the job created meanwhile is the newest, so it comes on a later page.
        later = f"p{tag}-e"
        listed = pages_with_a_job_created_between(
            sagemaker, lambda: create(later), 2, NameContains=tag
        )
        assert listed == [f"p{tag}-{x}" for x in "bcde"]
        # Newest first: the new job goes before the page already seen; nothing listed again.
        newest = f"p{tag}-f"
        listed = pages_with_a_job_created_between(
            sagemaker, lambda: create(newest), 2, NameContains=tag, SortOrder="Descending"
        )
        assert listed == [f"p{tag}-{x}" for x in "edcb"]
        # By name: one named before the page already seen shifts nothing that follows.
        first = f"p{tag}-a"
        listed = pages_with_a_job_created_between(
            sagemaker, lambda: create(first), 2, NameContains=tag, SortBy="Name"
        )
        assert listed == [f"p{tag}-{x}" for x in "bcdef"]
        # And one named after it is on a later page, once.
        last = f"p{tag}-z"
        listed = pages_with_a_job_created_between(
            sagemaker, lambda: create(last), 3, NameContains=tag, SortBy="Name"
        )
        assert listed == [f"p{tag}-{x}" for x in "abcdefz"]
    finally:
        wait_ended(sagemaker, created)


# --- "FilterLogEvents (plain-text filter patterns: terms, "phrases", ?any, -not ...) and
# DescribeLogGroups, for /aws/sagemaker/TrainingJobs" ------------------------------------------

LINES = ["ERROR disk full", "WARN slow step", "INFO step done", "ERROR exiting now", "DEBUG x"]


def test_filter_patterns_any_and_not_and_describe_log_groups(
    api_server: ApiServer, tmp_path: Path
) -> None:
    sagemaker, logs = api_server.client("sagemaker"), api_server.client("logs")
    name = unique("patterns")
    script = "#!/bin/sh\n" + "".join(f"echo '{line}'\n" for line in LINES)
    program = make_image(tmp_path / "image", script)
    sagemaker.create_training_job(**request(name, str(program), f"s3://{unique('b')}/out"))
    wait_ended(sagemaker, [name])

    def matching(pattern: str) -> list[str]:
        found = logs.filter_log_events(
            logGroupName=LOG_GROUP, logStreamNamePrefix=f"{name}/", filterPattern=pattern
        )
        assert validate_output("FilterLogEvents", strip(found), "logs") == []
        return [event["message"] for event in found["events"]]

    # ?term: any one of them will do; events stay in the order they were written.
    assert matching("?ERROR ?WARN") == [LINES[0], LINES[1], LINES[3]]
    assert matching("?WARN ?DEBUG ?nothing") == [LINES[1], LINES[4]]
    # -term: must not appear.
    assert matching("ERROR -exiting") == [LINES[0]]
    assert matching('step -"step done"') == [LINES[1]]
    # Terms are case-sensitive, as on AWS.
    assert matching("?error ?warn") == []

    groups = logs.describe_log_groups()
    assert validate_output("DescribeLogGroups", strip(groups), "logs") == []
    # Groups exist once written to: training's, and those of whatever else other tests ran.
    listed = [g["logGroupName"] for g in groups["logGroups"]]
    assert LOG_GROUP in listed and listed == sorted(listed), listed
    assert all(g.startswith("/aws/sagemaker/") for g in listed), listed
    prefixed = logs.describe_log_groups(logGroupNamePrefix="/aws/sagemaker/Training")
    assert [g["logGroupName"] for g in prefixed["logGroups"]] == [LOG_GROUP]
    assert logs.describe_log_groups(logGroupNamePrefix="/aws/lambda/")["logGroups"] == []
    paged = logs.get_paginator("describe_log_groups").paginate()
    assert [g["logGroupName"] for page in paged for g in page["logGroups"]] == listed


def strip(response: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in response.items() if k != "ResponseMetadata"}


def test_a_launch_file_left_wider_by_an_older_openmaker_is_tightened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from openmaker.jobs.queue import LAUNCH_FILE, save_launch
    from openmaker.settings import load_settings

    monkeypatch.setenv("OPENMAKER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    settings = load_settings()
    old = settings.jobs_dir / "old-job" / LAUNCH_FILE
    old.parent.mkdir(parents=True)
    old.write_text("{}")
    old.chmod(0o644)
    save_launch(settings, "old-job")
    assert stat.S_IMODE(old.stat().st_mode) == 0o600
    assert json.loads(old.read_text())["settings"]["s3_endpoint"]["secret_access_key"] == "secret"
