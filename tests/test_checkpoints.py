"""Continuous checkpoint sync: real inotify, a real S3 server, real jobs."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import openmaker.training.host.checkpoints.sync as checkpoint_sync
from openmaker.settings import load_settings
from openmaker.store import Location, resolve
from openmaker.store.transfer import SINGLE_PUT_LIMIT
from openmaker.training.host.checkpoints.snapshot import upload_snapshot
from openmaker.training.host.checkpoints.sync import CheckpointSync
from openmaker.training.host.checkpoints.transfer import Ledger, save_checkpoints
from openmaker.training.host.events import Event, TransferProgress
from openmaker.training.host.jobtree import HostTree
from openmaker.training.host.plan import (
    CheckpointPlan,
    CommandPlan,
    LimitsPlan,
    OutputPlan,
    TrainingPlan,
)
from openmaker.training.host.spec import HostSettings, HostSpec
from tests.helpers import get_object, log_text, put_objects, run_script
from tests.s3server import S3Server

BUCKET = "ckpt-sync"


def _eventually(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(0.05)


def _object(key: str) -> bytes | None:
    try:
        return get_object(f"s3://{BUCKET}/{key}")
    except FileNotFoundError:
        return None


@pytest.fixture
def remote(home: Path, s3_env: S3Server, request: pytest.FixtureRequest) -> Location:
    s3_env.make_bucket(BUCKET)
    return resolve(f"s3://{BUCKET}/{request.node.name}/", load_settings().store)


@pytest.fixture
def events() -> list[Event]:
    return []


@pytest.fixture
def sync_of(
    tmp_path: Path, remote: Location, events: list[Event]
) -> Iterator[Callable[[], CheckpointSync]]:
    """Starts a sync of tmp_path/ckpt to `remote` (as execute() does), stopped at the end."""
    started: list[CheckpointSync] = []

    def start() -> CheckpointSync:
        folder = tmp_path / "ckpt"
        folder.mkdir(exist_ok=True)
        sync = CheckpointSync(folder, remote, Ledger(tmp_path / "ledger.json", {}), events.append)
        sync.thread.start()
        started.append(sync)
        return sync

    yield start
    for sync in started:
        sync.stop()


def test_closed_files_go_up_while_open_ones_wait(
    request: pytest.FixtureRequest,
    sync_of: Callable[[], CheckpointSync],
    events: list[Event],
) -> None:
    sync = sync_of()
    prefix = request.node.name
    with open(sync.folder / "open.bin", "wb") as still_open:
        still_open.write(b"first half")
        still_open.flush()
        (sync.folder / "closed.bin").write_bytes(b"whole")
        _eventually(lambda: _object(f"{prefix}/closed.bin") == b"whole", "closed.bin upload")
        # Written and flushed well before closed.bin, but not closed: not uploaded.
        assert _object(f"{prefix}/open.bin") is None
        still_open.write(b", second half")
    _eventually(
        lambda: _object(f"{prefix}/open.bin") == b"first half, second half", "open.bin upload"
    )
    assert any(isinstance(e, TransferProgress) and e.phase == "Checkpointing" for e in events)


def test_new_folders_moves_and_deletes_follow(
    request: pytest.FixtureRequest, sync_of: Callable[[], CheckpointSync]
) -> None:
    sync = sync_of()
    prefix = request.node.name
    deep = sync.folder / "epoch-1" / "shards"
    deep.mkdir(parents=True)
    (deep / "a.bin").write_bytes(b"a")
    _eventually(lambda: _object(f"{prefix}/epoch-1/shards/a.bin") == b"a", "upload in new folder")
    # The usual atomic save: written aside, then renamed over the final name.
    (sync.folder / "latest.tmp").write_bytes(b"v1")
    os.replace(sync.folder / "latest.tmp", sync.folder / "latest.pt")
    _eventually(lambda: _object(f"{prefix}/latest.pt") == b"v1", "renamed file upload")
    _eventually(lambda: _object(f"{prefix}/latest.tmp") is None, "deletion of the moved name")
    (deep / "a.bin").unlink()
    _eventually(lambda: _object(f"{prefix}/epoch-1/shards/a.bin") is None, "deletion")
    # A whole folder moved away: everything below it is deleted.
    (deep / "b.bin").write_bytes(b"b")
    _eventually(lambda: _object(f"{prefix}/epoch-1/shards/b.bin") == b"b", "upload b")
    os.rename(sync.folder / "epoch-1", sync.folder.parent / "outside")
    _eventually(lambda: _object(f"{prefix}/epoch-1/shards/b.bin") is None, "folder moved away")


def test_stop_flushes_the_rest_and_leaves_the_end_of_job_save_nothing_to_do(
    request: pytest.FixtureRequest, sync_of: Callable[[], CheckpointSync], tmp_path: Path
) -> None:
    sync = sync_of()
    prefix = request.node.name
    # A file still open when the code ends (its process killed): the final flush takes it.
    still_open = open(sync.folder / "last.bin", "wb")  # noqa: SIM115
    still_open.write(b"last words")
    still_open.flush()
    link = sync.folder / "link"
    link.symlink_to("/etc/hostname")
    assert sync.stop()
    still_open.close()
    assert _object(f"{prefix}/last.bin") == b"last words"
    assert _object(f"{prefix}/link") is None  # links are never followed out of the folder
    ledger = Ledger.of_path(tmp_path / "ledger.json")
    assert set(ledger.files) == {"last.bin"}


def test_a_file_rewritten_while_uploaded_is_never_put_half_old_half_new(
    tmp_path: Path, remote: Location
) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(b"o" * (SINGLE_PUT_LIMIT + 1024))

    def rewrite_once(_: int) -> None:
        # Rewritten in place (same inode) after the first part was read.
        if path.read_bytes()[:1] == b"o":
            path.write_bytes(b"n" * (SINGLE_PUT_LIMIT + 2048))

    target = remote.child("big.bin")
    assert asyncio.run(upload_snapshot(path, target, rewrite_once)) is None
    assert _object(target.key) is None
    assert asyncio.run(upload_snapshot(path, target, lambda _: None)) is not None
    assert _object(target.key) == b"n" * (SINGLE_PUT_LIMIT + 2048)


def test_without_inotify_a_scan_uploads_files_once_unchanged(
    request: pytest.FixtureRequest,
    sync_of: Callable[[], CheckpointSync],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unavailable(folder: Path) -> None:
        raise OSError(38, "inotify is not available here")

    monkeypatch.setattr(checkpoint_sync, "InotifyWatcher", unavailable)
    quiet = 2.0
    monkeypatch.setattr(checkpoint_sync, "QUIET_SECONDS", quiet)
    sync = sync_of()
    assert sync.mode == "scan"
    prefix = request.node.name
    (sync.folder / "sub").mkdir()
    # A file still being written (appended to far more often than every `quiet` seconds) is
    # never uploaded; once left alone, it is, whole.
    growing = sync.folder / "sub" / "growing.bin"
    last_write = time.monotonic()
    stalled = False  # this process paused past `quiet`: the file really was unchanged a while
    for step in range(30):
        with open(growing, "ab") as out:
            out.write(b"%d," % step)
        now = time.monotonic()
        stalled = stalled or now - last_write >= quiet
        last_write = now
        if not stalled:
            assert _object(f"{prefix}/sub/growing.bin") is None, "uploaded while changing"
        time.sleep(0.05)  # the pace of the writer, not a wait for the sync
    whole = growing.read_bytes()
    _eventually(lambda: _object(f"{prefix}/sub/growing.bin") == whole, "upload once unchanged")
    (sync.folder / "sub" / "x.bin").write_bytes(b"x")
    _eventually(lambda: _object(f"{prefix}/sub/x.bin") == b"x", "scanned upload")
    (sync.folder / "sub" / "x.bin").unlink()
    _eventually(lambda: _object(f"{prefix}/sub/x.bin") is None, "scanned deletion")


def test_a_job_sees_its_checkpoint_uploaded_while_it_runs(
    tmp_path: Path, home: Path, s3_env: S3Server
) -> None:
    s3_env.make_bucket(BUCKET)
    # The code itself waits for its checkpoint to appear in S3 before it ends.
    script = f"""#!{sys.executable}
import time, boto3
open("/opt/ml/checkpoints/step-1.txt", "w").write("1")
s3 = boto3.client("s3")
for _ in range(600):
    found = s3.list_objects_v2(Bucket="{BUCKET}", Prefix="live/").get("Contents", [])
    if any(o["Key"] == "live/step-1.txt" for o in found):
        print("seen while running", flush=True)
        break
    time.sleep(0.05)
"""

    def edit(body: dict) -> None:
        body["CheckpointConfig"] = {"S3Uri": f"s3://{BUCKET}/live"}

    jobs, description = run_script(
        tmp_path, "live-ckpt", script, output=f"s3://{BUCKET}/out", edit=edit
    )
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    assert "seen while running" in log_text(jobs, "live-ckpt")


def test_hosts_of_one_job_never_delete_each_others_checkpoints(tmp_path: Path, home: Path) -> None:
    script = (
        "#!/bin/sh\nset -e\n"
        'host=$(hostname)\necho "$host" > "/opt/ml/checkpoints/$host.txt"\n'
        "rm -f /opt/ml/checkpoints/shared.txt\n"
    )

    def edit(body: dict) -> None:
        body["CheckpointConfig"] = {"S3Uri": "s3://ckpt/multi"}
        body["ResourceConfig"]["InstanceCount"] = 2

    put_objects({"s3://ckpt/multi/shared.txt": b"restored on both"})
    _, description = run_script(tmp_path, "two-hosts", script, edit=edit)
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    assert get_object("s3://ckpt/multi/algo-1.txt") == b"algo-1\n"
    assert get_object("s3://ckpt/multi/algo-2.txt") == b"algo-2\n"
    with pytest.raises(FileNotFoundError):
        get_object("s3://ckpt/multi/shared.txt")


def test_end_of_job_save_after_a_failed_sync_uploads_the_rest(
    tmp_path: Path, remote: Location, request: pytest.FixtureRequest
) -> None:
    """The end-of-job save alone (no sync ran): everything differing from the ledger."""
    settings = load_settings()
    spec = HostSpec(
        job_name="j", job_arn="arn",
        plan=TrainingPlan(
            CommandPlan("/unused"), OutputPlan("s3://b/out/"), LimitsPlan("ml.m5.large"),
            checkpoint=CheckpointPlan(remote.uri),
        ),
        host_name="algo-1", hosts=["algo-1"], region="us-east-1",
        settings=HostSettings.of(settings), work_dir=tmp_path / "host",
    )  # fmt: skip
    folder = spec.ml_dir / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "a.txt").write_text("a")
    events: list[Event] = []
    with HostTree(spec) as tree:
        save_checkpoints(spec, tree, events.append)
        assert _object(f"{request.node.name}/a.txt") == b"a"
        assert events
        events.clear()
        save_checkpoints(spec, tree, events.append)  # nothing changed since: nothing to do
    assert events == []
