"""Channel building blocks: sharding, shuffling, RecordIO, gzip, and reads that resume after a
real connection breaks off (a proxy in front of the real S3 server cuts responses short)."""

from __future__ import annotations

import asyncio
import gzip
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import obstore
import pytest
from obstore.store import S3Store

from openmaker.settings import load_settings
from openmaker.store import StoreError, resolve, stream
from openmaker.store.manifest import parse_augmented_manifest
from openmaker.store.ranged import fetch_part
from openmaker.store.stream import Chunk, stream_object
from openmaker.training.host.channels import recordio
from openmaker.training.host.channels.objects import for_host
from openmaker.training.host.channels.pipe import _gunzip
from openmaker.training.host.channels.sharding import shard
from openmaker.training.host.channels.shuffle import shuffled
from openmaker.training.host.plan import (
    ChannelPlan,
    CommandPlan,
    DataType,
    InputMode,
    LimitsPlan,
    OutputPlan,
    TrainingPlan,
)
from openmaker.training.host.spec import HostSettings, HostSpec
from tests.s3proxy import Fault, S3Proxy, object_get
from tests.s3server import S3Server

KEYS = [f"data/part-{i:03d}" for i in range(23)]


@pytest.mark.parametrize("hosts", [1, 2, 3, 7, 30])
def test_every_object_goes_to_exactly_one_host(hosts: int) -> None:
    shares = [shard(KEYS, index, hosts, key=str) for index in range(hosts)]
    assert sorted(k for share in shares for k in share) == sorted(KEYS)
    assert sum(len(share) for share in shares) == len(KEYS)
    # Round-robin over sorted keys: shares differ in size by at most one; a host may get none.
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_sharding_is_stable_and_independent_of_the_listing_order() -> None:
    reversed_keys = list(reversed(KEYS))
    for index in range(4):
        first = shard(KEYS, index, 4, key=str)
        assert first == shard(KEYS, index, 4, key=str)
        assert sorted(first) == sorted(shard(reversed_keys, index, 4, key=str))
    assert shard(KEYS, 1, 4, key=str) == KEYS[1::4]
    with pytest.raises(ValueError):
        shard(KEYS, 4, 4)


def test_shuffle_is_reproducible_and_new_every_epoch() -> None:
    orders = [shuffled(KEYS, 42, epoch) for epoch in range(5)]
    assert all(sorted(order) == KEYS for order in orders)
    assert len({tuple(order) for order in orders}) == 5
    assert shuffled(KEYS, 42, 3) == orders[3]
    assert shuffled(KEYS, 43, 0) != orders[0]


def test_shuffle_order_does_not_depend_on_the_process() -> None:
    code = (
        "from openmaker.training.host.channels.shuffle import shuffled; "
        f"print(shuffled({KEYS!r}, 9, 2))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    }  # fmt: skip
    assert outputs == {str(shuffled(KEYS, 9, 2)) + "\n"}


def test_recordio_framing() -> None:
    for length in (0, 1, 3, 4, 5, 1000):
        frame = recordio.header(length) + b"x" * length + recordio.padding(length)
        magic, word = struct.unpack_from("<II", frame)
        assert magic == 0xCED7230A and word == length
        assert len(frame) % 4 == 0 and frame[8 + length :] == b"\0" * (len(frame) - 8 - length)
    with pytest.raises(recordio.RecordTooLarge):
        recordio.header(1 << 29)


def test_gzip_streams_of_several_members_are_decompressed_chunk_by_chunk() -> None:
    original = os.urandom(300_000) + b"tail"
    packed = gzip.compress(original[:100_000]) + gzip.compress(original[100_000:])

    async def chunks() -> Any:
        for start in range(0, len(packed), 4096):
            yield packed[start : start + 4096]

    async def collect() -> bytes:
        return b"".join([chunk async for chunk in _gunzip(chunks())])

    assert asyncio.run(collect()) == original


def test_a_small_gzip_chunk_never_inflates_past_the_chunk_size() -> None:
    packed = gzip.compress(b"\0" * (20 * 1024 * 1024))

    async def one_chunk() -> Any:
        yield packed

    async def sizes() -> list[int]:
        return [len(chunk) async for chunk in _gunzip(one_chunk())]

    got = asyncio.run(sizes())
    assert sum(got) == 20 * 1024 * 1024 and max(got) <= 1024 * 1024


@pytest.fixture
def flaky(s3_server: S3Server, home: Path) -> Iterator[tuple[S3Proxy, dict[str, str]]]:
    """The S3 server behind a proxy that cuts the first two GETs of `blob` short."""
    s3_server.make_bucket("flaky")
    s3_server.client().put_object(Bucket="flaky", Key="blob", Body=BLOB)
    proxy = S3Proxy(s3_server.url)
    proxy.add(Fault(object_get("blob"), times=2, keep=300_000))
    yield proxy, {**s3_server.env(), "AWS_ENDPOINT_URL_S3": proxy.url}
    proxy.close()


def _ranges(proxy: S3Proxy) -> list[tuple[str | None, int]]:
    """The Range header of each GET of `blob`, with the bytes of the body sent to it."""
    return [(s.headers.get("range"), s.body_sent) for s in proxy.requests(object_get("blob"))]


BLOB = os.urandom(3 * 1024 * 1024 + 11)


def test_a_stream_cut_short_resumes_from_the_byte_it_reached(
    flaky: tuple[S3Proxy, dict[str, str]],
) -> None:
    proxy, env = flaky
    location = resolve("s3://flaky/blob", load_settings({**os.environ, **env}).store)

    async def read() -> bytes:
        return b"".join([c async for c in stream_object(location.store, location.key, len(BLOB))])

    assert asyncio.run(read()) == BLOB
    # Two cut short, each retry asking for the rest from the byte the last one reached.
    end = len(BLOB) - 1
    assert _ranges(proxy) == [
        (None, 300_000),
        (f"bytes=300000-{end}", 300_000),
        (f"bytes=600000-{end}", len(BLOB) - 600_000),
    ]


def test_a_ranged_part_cut_short_resumes(
    flaky: tuple[S3Proxy, dict[str, str]], tmp_path: Path
) -> None:
    proxy, env = flaky
    location = resolve("s3://flaky/blob", load_settings({**os.environ, **env}).store)
    assert isinstance(location.store, S3Store)
    url = obstore.sign(location.store, "GET", location.key, timedelta(hours=1))
    target = tmp_path / "blob"
    fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert fetch_part(url, fd, 1000, len(BLOB) - 1, retry=60) == len(BLOB) - 1000
    finally:
        os.close(fd)
    assert target.read_bytes()[1000:] == BLOB[1000:]
    end = len(BLOB) - 1
    assert _ranges(proxy) == [
        (f"bytes=1000-{end}", 300_000),
        (f"bytes=301000-{end}", 300_000),
        (f"bytes=601000-{end}", len(BLOB) - 601_000),
    ]


def test_without_retries_a_broken_stream_fails_naming_the_object(
    flaky: tuple[S3Proxy, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENMAKER_STORE_RETRY_SECONDS", "0")
    _, env = flaky
    location = resolve("s3://flaky/blob", load_settings({**os.environ, **env}).store)

    async def read() -> None:
        async for _ in stream_object(location.store, location.key, len(BLOB)):
            pass

    with pytest.raises(StoreError, match="blob"):
        asyncio.run(read())


def test_a_large_object_streams_in_parallel_parts_that_resume(
    flaky: tuple[S3Proxy, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small thresholds, so that a 3 MiB object takes the large-object path in 13 parts.
    monkeypatch.setattr(stream, "RANGED_MIN_SIZE", 1024 * 1024)
    monkeypatch.setattr(stream, "PART_SIZE", 256 * 1024)
    proxy, env = flaky
    proxy.faults[0].keep = 100_000  # inside a part
    location = resolve("s3://flaky/blob", load_settings({**os.environ, **env}).store)

    async def read() -> list[Chunk]:
        return [c async for c in stream_object(location.store, location.key, len(BLOB))]

    parts = asyncio.run(read())
    assert b"".join(parts) == BLOB
    assert len(parts) == 13
    # 13 parts, two of them cut short and asked for again from the byte they reached.
    gets = _ranges(proxy)
    assert len(gets) == 15
    cut = [(r, sent) for r, sent in gets if sent == 100_000]
    assert len(cut) == 2
    for range_header, _ in cut:
        assert range_header is not None
        start, end = map(int, range_header.removeprefix("bytes=").split("-"))
        assert (f"bytes={start + 100_000}-{end}", end + 1 - start - 100_000) in gets


def host(index: int, count: int) -> HostSpec:
    names = [f"algo-{i + 1}" for i in range(count)]
    return HostSpec(
        job_name="j", job_arn="arn",
        plan=TrainingPlan(
            CommandPlan("/unused"), OutputPlan("s3://b/out/"), LimitsPlan("ml.m5.large")
        ),
        host_name=names[index], hosts=names,
        region="us-east-1", settings=HostSettings.of(load_settings()),
        work_dir=Path("/nonexistent"),
    )  # fmt: skip


@pytest.mark.parametrize("seed", [None, 5])
def test_each_epoch_deals_every_object_to_exactly_one_host(seed: int | None) -> None:
    channel = ChannelPlan(
        "train", InputMode.FILE, "s3://b/train/", DataType.PREFIX, sharded=True, shuffle_seed=seed
    )
    shares_by_epoch = []
    for epoch in range(4):
        shares = [for_host(host(i, 3), channel, KEYS, epoch) for i in range(3)]
        assert sorted(k for share in shares for k in share) == KEYS
        assert shares == [for_host(host(i, 3), channel, KEYS, epoch) for i in range(3)]
        shares_by_epoch.append([sorted(share) for share in shares])
    if seed is None:
        # Sorted keys dealt round-robin, the same every epoch.
        assert all(s == [KEYS[0::3], KEYS[1::3], KEYS[2::3]] for s in shares_by_epoch)
    else:
        # As on SageMaker, a shuffled channel's shares change from epoch to epoch.
        assert len({str(s) for s in shares_by_epoch}) == 4


def test_augmented_manifest_lines_keep_attribute_order_and_name_bad_lines() -> None:
    data = (
        b'{"source-ref": "s3://b/a.jpg", "class": 1, "meta": {"x": [1, 2]}}\n'
        b"\n"
        b'{"source-ref": "s3://b/b.jpg", "class": "cat", "meta": null}\n'
    )
    lines = parse_augmented_manifest(data, "s3://b/m", ["meta", "source-ref", "class"])
    assert lines == [
        [b'{"x": [1, 2]}', ("ref", "s3://b/a.jpg"), b"1"],
        [b"null", ("ref", "s3://b/b.jpg"), b"cat"],
    ]
    with pytest.raises(StoreError, match="line 1 has no attribute 'label'"):
        parse_augmented_manifest(data, "s3://b/m", ["source-ref", "label"])
    with pytest.raises(StoreError, match="line 1: 'class-ref' must be an s3:// URI"):
        parse_augmented_manifest(b'{"class-ref": 3}', "s3://b/m", ["class-ref"])
    with pytest.raises(StoreError, match="line 2"):
        parse_augmented_manifest(b'{"a": 1}\n{oops\n', "s3://b/m", ["a"])
