"""Object stores: S3 prefix semantics, safe key mapping, transfers — on a real S3 server."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import os
import threading
from pathlib import Path

import obstore
import pytest
from obstore.store import LocalStore

from openmaker.settings import load_settings
from openmaker.store import (
    Download,
    StoreError,
    UnsafeKeyError,
    download_all,
    list_prefix,
    relative_to_prefix,
    resolve,
    safe_destination,
    upload_file,
)
from openmaker.store.local_listing import list_local
from openmaker.store.manifest import parse_manifest
from openmaker.store.ranged import PART_SIZE, RANGED_MIN_SIZE, fetch_part, ranged_store
from openmaker.store.transfer import SINGLE_PUT_LIMIT
from tests.s3server import S3Server


@pytest.mark.parametrize(
    ("key", "prefix", "local"),
    [
        ("data/train/x.csv", "data/train", "x.csv"),
        ("data/train-a.csv", "data/train", "train-a.csv"),
        ("data/train2/y.csv", "data/train", "train2/y.csv"),
        ("data/train/sub/z.csv", "data/train/", "sub/z.csv"),
        ("data/train/x.csv", "data/train/x.csv", "x.csv"),
        ("file.csv", "", "file.csv"),
        ("a/b", "a", "b"),
    ],
)
def test_local_path_of_a_key(key: str, prefix: str, local: str) -> None:
    assert relative_to_prefix(key, prefix) == local


@pytest.mark.parametrize("relative", ["../x", "a/../../x", "/etc/passwd", "", "a/\x00b"])
def test_paths_leaving_the_folder_are_refused(tmp_path: Path, relative: str) -> None:
    with pytest.raises(UnsafeKeyError):
        safe_destination(tmp_path, relative)


def test_safe_paths_stay_inside(tmp_path: Path) -> None:
    assert safe_destination(tmp_path, "a/b/c.csv") == tmp_path / "a" / "b" / "c.csv"


KEYS = [
    "data/train/x.csv",
    "data/train/sub/y.csv",
    "data/train-a.csv",
    "data/trainz/q",
    "data/other",
]


def test_listing_has_s3_prefix_semantics_on_a_server(home: Path, s3_env: S3Server) -> None:
    s3_env.make_bucket("listing")
    client = s3_env.client()
    for key in KEYS:
        client.put_object(Bucket="listing", Key=key, Body=key.encode())
    settings = load_settings()

    def keys(uri: str) -> list[str]:
        return [o.key for o in asyncio.run(list_prefix(resolve(uri, settings.store)))]

    assert keys("s3://listing/data/train") == [
        "data/train-a.csv", "data/train/sub/y.csv", "data/train/x.csv", "data/trainz/q",
    ]  # fmt: skip
    assert keys("s3://listing/data/train/") == ["data/train/sub/y.csv", "data/train/x.csv"]
    assert keys("s3://listing/data/train-") == ["data/train-a.csv"]
    assert keys("s3://listing/data/nothing") == []
    assert len(keys("s3://listing")) == len(KEYS)


def test_listing_has_the_same_semantics_on_the_embedded_store(home: Path) -> None:
    for key in KEYS:
        path = home / "s3" / "emb" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(key)
    found = asyncio.run(list_prefix(resolve("s3://emb/data/train", load_settings().store)))
    assert [o.key for o in found] == [
        "data/train-a.csv", "data/train/sub/y.csv", "data/train/x.csv", "data/trainz/q",
    ]  # fmt: skip


def _obstores_keys(folder: Path, prefix: str) -> list[str]:
    """What obstore itself lists (the answer the direct listing must give)."""
    parent = prefix.rpartition("/")[0]
    store = LocalStore(folder)
    found = [m["path"] for batch in obstore.list(store, parent or None) for m in batch]
    return sorted(k for k in found if k.startswith(prefix))


def test_a_local_folder_is_listed_directly_with_obstores_answer(tmp_path: Path) -> None:
    folder = tmp_path / "bucket"
    for key in KEYS:
        path = folder / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(key)
    (folder / "data" / "empty").mkdir()
    prefixes = ["", "data", "data/", "data/train", "data/train/", "data/train-", "data/x", "no/"]
    for prefix in prefixes:
        direct = list_local(folder, prefix)
        assert direct is not None, prefix
        assert sorted(key for key, _ in direct) == _obstores_keys(folder, prefix), prefix
    assert ("data/train/sub/y.csv", len("data/train/sub/y.csv")) in (list_local(folder, "") or [])


def test_a_local_folder_with_links_or_odd_names_is_left_to_obstore(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "secret").write_text("not the store's")
    folder = tmp_path / "bucket"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "x").write_text("x")
    # A link below the prefix, a link on the prefix's own path, a name obstore skips (its
    # unfinished uploads), a name it refuses, a fifo: never read here, never followed.
    (folder / "data" / "link").symlink_to(outside / "deep")
    assert list_local(folder, "data/") is None
    (folder / "data" / "link").unlink()
    assert list_local(folder, "data/") == [("data/x", 1)]
    (folder / "hop").symlink_to(outside)
    assert list_local(folder, "hop/deep/") is None
    for odd in ("part#1", "bell\x07"):
        (folder / "data" / odd).write_text("o")
        assert list_local(folder, "data/") is None, odd
        (folder / "data" / odd).unlink()
    os.mkfifo(folder / "data" / "fifo")
    assert list_local(folder, "data/") is None
    # The listing (which falls back to obstore) still answers.
    found = asyncio.run(list_prefix(resolve(f"file://{folder}/data/x", load_settings().store)))
    assert [o.key for o in found] == [f"{str(folder).lstrip('/')}/data/x"]


def test_large_upload_and_download_round_trip(tmp_path: Path, home: Path, s3_env: S3Server) -> None:
    s3_env.make_bucket("big")
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(SINGLE_PUT_LIMIT + 3 * 1024 * 1024))  # multipart
    settings = load_settings()
    location = resolve("s3://big/blobs/one.bin", settings.store)
    sent: list[int] = []
    asyncio.run(upload_file(source, location, sent.append))
    assert sum(sent) == source.stat().st_size
    target = tmp_path / "out" / "one.bin"
    received: list[int] = []
    size = source.stat().st_size
    asyncio.run(
        download_all([Download(location.store, location.key, size, target)], received.append)
    )
    assert sum(received) == size
    assert (
        hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(source.read_bytes()).digest()
    )


def test_unsupported_uris_are_clear_errors(home: Path) -> None:
    with pytest.raises(StoreError, match="unsupported URI"):
        resolve("ftp://host/x", load_settings().store)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json", "not valid JSON"),
        (b'["a"]', "must be a JSON array starting with"),
        (b'[{"prefix": "s3://b/p/"}, 3]', "every entry"),
        (b"{}", "must be a JSON array"),
    ],
)
def test_bad_manifests_are_clear_errors(data: bytes, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        parse_manifest(data, "s3://b/m.json")


def test_manifest_keeps_its_order() -> None:
    prefix, entries = parse_manifest(b'[{"prefix": "s3://b/p/"}, "z", "a/b"]', "s3://b/m")
    assert prefix == "s3://b/p/" and entries == ["z", "a/b"]


def test_large_objects_come_in_ranged_parts(tmp_path: Path, home: Path, s3_env: S3Server) -> None:
    s3_env.make_bucket("ranged")
    size = RANGED_MIN_SIZE + PART_SIZE // 2 + 12345  # a short last part
    source = tmp_path / "large.bin"
    source.write_bytes(os.urandom(size))
    s3_env.client().upload_file(str(source), "ranged", "large.bin")
    location = resolve("s3://ranged/large.bin", load_settings().store)
    assert ranged_store(location.store, size) is not None
    target = tmp_path / "out.bin"
    received: list[int] = []
    asyncio.run(
        download_all([Download(location.store, location.key, size, target)], received.append)
    )
    assert len(received) > 1 and max(received) <= PART_SIZE and sum(received) == size
    assert (
        hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(source.read_bytes()).digest()
    )


class _WholeBodyHandler(http.server.BaseHTTPRequestHandler):
    """A server that ignores Range and sends the whole object."""

    def do_GET(self) -> None:
        body = b"x" * 100
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_part_answered_with_the_whole_object_is_refused(tmp_path: Path) -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _WholeBodyHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        fd = os.open(tmp_path / "part", os.O_WRONLY | os.O_CREAT)
        url = f"http://127.0.0.1:{server.server_port}/b/k?X-Amz-Signature=s"
        with pytest.raises(OSError, match="answered HTTP 200"):
            fetch_part(url, fd, 10, 19, retry=60)
        os.close(fd)
        assert (tmp_path / "part").stat().st_size == 0
    finally:
        server.shutdown()
