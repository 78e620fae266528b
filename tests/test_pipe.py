"""Pipe mode end to end: real jobs in the bwrap sandbox reading real FIFOs from a real S3 server."""

from __future__ import annotations

import gzip
import io
import json
import struct
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from openmaker.training.host.channels.shuffle import shuffled
from tests.helpers import get_object, put_objects, run_script, source_of
from tests.s3server import S3Server

OBJECTS = {f"data/train/part-{i:02d}.bin": bytes([i]) * (1000 + 37 * i) for i in range(12)}
# One object larger than the streamer's chunks and its write size.
OBJECTS["data/train/zz-large.bin"] = bytes(range(256)) * (12 * 1024 + 7)

# Written the way the SageMaker examples write a Pipe reader: /opt/ml hard-coded, wait for the
# FIFO of each epoch to appear, read it to EOF. PLAN: [(channel, epochs, epochs closed early)].
READER = (
    "#!"
    + sys.executable
    + """
import os, time
for channel, epochs, close_early in PLAN:
    for epoch in range(epochs):
        path = f"/opt/ml/input/data/{channel}_{epoch}"
        while not os.path.exists(path):
            time.sleep(0.01)
        with open(path, "rb") as fifo:
            data = fifo.read(10) if epoch in close_early else fifo.read()
        with open(f"/opt/ml/model/{channel}-{epoch}", "wb") as out:
            out.write(data)
"""
)


def reader(*plan: tuple[Any, ...]) -> str:
    full = [(p[0], p[1], p[2] if len(p) > 2 else ()) for p in plan]
    return READER.replace("PLAN", repr(full))


def pipe_edit(**channel_fields: Any) -> Callable[[dict[str, Any]], None]:
    def edit(body: dict[str, Any]) -> None:
        body["AlgorithmSpecification"]["TrainingInputMode"] = "Pipe"
        for channel in body["InputDataConfig"]:
            channel.update(channel_fields)

    return edit


def model_files(description: dict[str, Any]) -> dict[str, bytes]:
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    data = get_object(description["ModelArtifacts"]["S3ModelArtifacts"])
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def records(data: bytes) -> Iterator[bytes]:
    """An independent RecordIO decoder: magic, length, payload, padding to 4 bytes."""
    position = 0
    while position < len(data):
        magic, length = struct.unpack_from("<II", data, position)
        assert magic == 0xCED7230A
        assert length >> 29 == 0
        position += 8
        yield data[position : position + length]
        position += length + (-length % 4)
    assert position == len(data)


@pytest.fixture
def bucket(home: Path, s3_env: S3Server) -> str:
    s3_env.make_bucket("pipe")
    put_objects({f"s3://pipe/{key}": data for key, data in OBJECTS.items()})
    return "s3://pipe"


def in_key_order() -> bytes:
    return b"".join(OBJECTS[k] for k in sorted(OBJECTS))


def test_a_sagemaker_style_reader_gets_every_byte_of_five_epochs(
    tmp_path: Path, bucket: str
) -> None:
    _, description = run_script(
        tmp_path, "pipe-five", reader(("training", 5)), f"{bucket}/out",
        {"training": f"{bucket}/data/train"}, edit=pipe_edit(),
    )  # fmt: skip
    files = model_files(description)
    for epoch in range(5):
        assert files[f"training-{epoch}"] == in_key_order()


def test_a_reader_that_closes_early_moves_on_to_the_next_epoch(tmp_path: Path, bucket: str) -> None:
    _, description = run_script(
        tmp_path, "pipe-early", reader(("training", 4, (0, 2))), f"{bucket}/out",
        {"training": f"{bucket}/data/train"}, edit=pipe_edit(),
    )  # fmt: skip
    files = model_files(description)
    assert files["training-0"] == in_key_order()[:10]
    assert files["training-1"] == in_key_order()
    assert files["training-2"] == in_key_order()[:10]
    assert files["training-3"] == in_key_order()


def test_recordio_gzip_and_shuffle_per_epoch(tmp_path: Path, home: Path, s3_env: S3Server) -> None:
    s3_env.make_bucket("pipez")
    plain = {f"z/rec-{i}.txt": f"record {i} ".encode() * (i + 1) for i in range(8)}
    put_objects({f"s3://pipez/{k}": gzip.compress(v) for k, v in plain.items()})
    _, description = run_script(
        tmp_path, "pipe-rio", reader(("training", 3)), "s3://pipez/out",
        {"training": "s3://pipez/z/"},
        edit=pipe_edit(
            CompressionType="Gzip", RecordWrapperType="RecordIO", ShuffleConfig={"Seed": 7}
        ),
    )  # fmt: skip
    files = model_files(description)
    keys = sorted(plain)
    by_payload = {plain[k]: k for k in keys}
    orders = []
    for epoch in range(3):
        order = [by_payload[r] for r in records(files[f"training-{epoch}"])]
        # Every object once, in the seed's order for this epoch (the same seed gives it again).
        assert order == shuffled(keys, 7, epoch)
        orders.append(tuple(order))
    assert len(set(orders)) == 3


def test_several_pipe_channels_at_once(tmp_path: Path, bucket: str) -> None:
    put_objects({"s3://pipe/other/a": b"A" * 5000, "s3://pipe/other/b": b"B" * 3})
    _, description = run_script(
        tmp_path, "pipe-two", reader(("training", 2), ("other", 3)), f"{bucket}/out",
        {"training": f"{bucket}/data/train", "other": f"{bucket}/other"}, edit=pipe_edit(),
    )  # fmt: skip
    files = model_files(description)
    assert files["training-0"] == files["training-1"] == in_key_order()
    for epoch in range(3):
        assert files[f"other-{epoch}"] == b"A" * 5000 + b"B" * 3


def test_manifest_and_augmented_manifest_in_pipe_mode(
    tmp_path: Path, home: Path, s3_env: S3Server
) -> None:
    s3_env.make_bucket("man")
    put_objects({"s3://man/img/a.jpg": b"AAAA", "s3://man/img/b.jpg": b"BBBBBBB"})
    manifest = [{"prefix": "s3://man/img/"}, "b.jpg", "a.jpg", "b.jpg"]
    lines = [
        {"source-ref": "s3://man/img/a.jpg", "label": 3, "note": "x"},
        {"source-ref": "s3://man/img/b.jpg", "label": {"k": 1}, "note": "y"},
    ]
    put_objects(
        {
            "s3://man/list.manifest": json.dumps(manifest).encode(),
            "s3://man/aug.manifest": "\n".join(json.dumps(line) for line in lines).encode(),
        }
    )

    def edit(body: dict[str, Any]) -> None:
        pipe_edit()(body)
        source_of(body, 0)["S3DataType"] = "ManifestFile"
        source_of(body, 1).update(
            S3DataType="AugmentedManifestFile", AttributeNames=["label", "source-ref"]
        )
        body["InputDataConfig"][1]["RecordWrapperType"] = "RecordIO"

    _, description = run_script(
        tmp_path, "pipe-manifests", reader(("plain", 2), ("aug", 2)), "s3://man/out",
        {"plain": "s3://man/list.manifest", "aug": "s3://man/aug.manifest"}, edit=edit,
    )  # fmt: skip
    files = model_files(description)
    assert files["plain-0"] == files["plain-1"] == b"BBBBBBB" + b"AAAA" + b"BBBBBBB"
    assert list(records(files["aug-0"])) == [b"3", b"AAAA", b'{"k": 1}', b"BBBBBBB"]
    assert files["aug-1"] == files["aug-0"]


def test_an_unreadable_pipe_channel_fails_before_the_code_starts(
    tmp_path: Path, bucket: str
) -> None:
    _, description = run_script(
        tmp_path, "pipe-missing", reader(("training", 1)), f"{bucket}/out",
        {"training": f"{bucket}/nothing-here/"}, edit=pipe_edit(),
    )  # fmt: skip
    assert description["TrainingJobStatus"] == "Failed"
    assert "channel 'training'" in description["FailureReason"]
    assert "nothing-here" in description["FailureReason"]


def test_an_object_that_cannot_be_read_while_streaming_fails_the_job_naming_it(
    tmp_path: Path, home: Path, s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENMAKER_STOP_GRACE_SECONDS", "1")
    s3_env.make_bucket("pipefail")
    put_objects({f"s3://pipefail/d/part-{i}": b"x" * 1000 for i in range(4)})
    # The object disappears after the channel was listed, before the epoch is streamed.
    script = (
        "#!" + sys.executable + "\n"
        "import boto3, time\n"
        "boto3.client('s3').delete_object(Bucket='pipefail', Key='d/part-2')\n"
        "with open('/opt/ml/input/data/training_0', 'rb') as fifo:\n"
        "    fifo.read()\n"
        "time.sleep(600)\n"
    )
    _, description = run_script(
        tmp_path, "pipe-lost", script, "s3://pipefail/out", {"training": "s3://pipefail/d/"},
        edit=pipe_edit(),
    )  # fmt: skip
    assert description["TrainingJobStatus"] == "Failed"
    reason = description["FailureReason"]
    assert reason.startswith("ClientError: ")
    assert "channel 'training'" in reason and "s3://pipefail/d/part-2" in reason, reason


def test_a_sharded_local_channel_streams_each_host_its_share(tmp_path: Path, home: Path) -> None:
    data = tmp_path / "local"
    data.mkdir()
    for i in range(5):
        (data / f"part-{i}").write_bytes(str(i).encode() * (i + 1))
    script = (
        "#!" + sys.executable + "\n"
        "import os, socket, time\n"
        "for epoch in range(2):\n"
        "    path = f'/opt/ml/input/data/training_{epoch}'\n"
        "    while not os.path.exists(path):\n"
        "        time.sleep(0.01)\n"
        "    data = open(path, 'rb').read()\n"
        "    open(f'/opt/ml/model/{socket.gethostname()}-{epoch}', 'wb').write(data)\n"
    )

    def edit(body: dict[str, Any]) -> None:
        pipe_edit()(body)
        body["ResourceConfig"]["InstanceCount"] = 2
        source_of(body)["S3DataDistributionType"] = "ShardedByS3Key"

    _, description = run_script(
        tmp_path, "pipe-shards", script, "s3://b/out", {"training": f"file://{data}"}, edit=edit
    )
    files = model_files(description)
    for epoch in range(2):
        assert files[f"algo-1-{epoch}"] == b"0" + b"222" + b"44444"
        assert files[f"algo-2-{epoch}"] == b"11" + b"3333"


def test_without_a_sandbox_the_fifos_are_under_sagemaker_base_dir(
    tmp_path: Path, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENMAKER_SANDBOX", "none")
    script = reader(("training", 2)).replace('f"/opt/ml', 'os.environ["SAGEMAKER_BASE_DIR"] + f"')
    _, description = run_script(
        tmp_path, "pipe-plain", script, f"{bucket}/out",
        {"training": f"{bucket}/data/train"}, edit=pipe_edit(),
    )  # fmt: skip
    files = model_files(description)
    assert files["training-0"] == files["training-1"] == in_key_order()
