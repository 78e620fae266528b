"""The embedded S3 endpoint's front: a job's key outside its places gets S3's `AccessDenied`
(never a 5xx, never a change), inside them everything a client does works as through rclone
alone; no key gets a 500 for a key no file can hold.

A real `openmaker server`; the job's attempts are made by its own code with boto3 and the aws CLI
and its own environment; the others with boto3, the aws CLI and raw HTTP from outside.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.apiserver import ApiServer
from tests.test_job_credentials import ATTEMPTS, NO_RETRIES, model_file, run_job, unique

PART = 5 * 1024 * 1024


def test_a_jobs_key_is_denied_outside_its_places_and_works_inside(
    api_server: ApiServer, tmp_path: Path
) -> None:
    s3 = api_server.client("s3", config=NO_RETRIES)
    data, victim = unique("data"), unique("victim")
    for bucket in (data, victim):
        s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=victim, Key="model.tar.gz", Body=b"the victim's model")
    s3.put_object(Bucket=data, Key="train/part-0", Body=b"0123456789" * 10)
    s3.put_object(Bucket=data, Key="private/secret", Body=b"not the job's")
    name = unique("front")
    out = f"out/{name}"
    code = (
        ATTEMPTS
        + f"""
import io, pathlib, subprocess, sys
from boto3.s3.transfer import TransferConfig
s3 = boto3.client("s3", config=NO_RETRIES)
data, victim, out = {data!r}, {victim!r}, {out!r}
# Outside: each must be AccessDenied (a HEAD's error has no body: its status stands for it).
attempt("get other bucket", lambda: s3.get_object(Bucket=victim, Key="model.tar.gz"))
attempt("head other bucket", lambda: s3.head_object(Bucket=victim, Key="model.tar.gz"))
attempt("get sibling", lambda: s3.get_object(Bucket=data, Key="private/secret"))
attempt("put other bucket", lambda: s3.put_object(Bucket=victim, Key="model.tar.gz", Body=b"x"))
attempt("put file body", lambda: s3.put_object(
    Bucket=victim, Key="model.tar.gz", Body=io.BytesIO(b"x" * 100000)))
attempt("put channel", lambda: s3.put_object(Bucket=data, Key="train/part-0", Body=b"x"))
attempt("put beside output", lambda: s3.put_object(Bucket=data, Key="out/other/x", Body=b"x"))
attempt("delete other bucket", lambda: s3.delete_object(Bucket=victim, Key="model.tar.gz"))
attempt("delete channel", lambda: s3.delete_object(Bucket=data, Key="train/part-0"))
attempt("list other bucket", lambda: s3.list_objects_v2(Bucket=victim))
attempt("list sibling", lambda: s3.list_objects_v2(Bucket=data, Prefix="private/"))
attempt("copy out", lambda: s3.copy_object(
    Bucket=data, Key=out + "/stolen", CopySource={{"Bucket": victim, "Key": "model.tar.gz"}}))
attempt("multipart outside", lambda: s3.create_multipart_upload(Bucket=victim, Key="mpu"))
attempt("delete bucket", lambda: s3.delete_bucket(Bucket=victim))
attempt("delete objects", lambda: s3.delete_objects(Bucket=data, Delete={{"Objects": [
    {{"Key": out + "/mine"}}, {{"Key": "private/secret"}}]}}))
attempt("create bucket", lambda: s3.create_bucket(Bucket=victim + "-new"))
# Inside: as through rclone alone.
big = bytes(range(256)) * (11 * 1024 * 1024 // 256)
attempt("multipart", lambda: s3.upload_fileobj(io.BytesIO(big), data, out + "/big", Config=
    TransferConfig(multipart_threshold={PART}, multipart_chunksize={PART})))
results["multipart ok"] = s3.get_object(Bucket=data, Key=out + "/big")["Body"].read() == big
results["ranged"] = s3.get_object(Bucket=data, Key="train/part-0", Range="bytes=5-9")[
    "Body"].read().decode()
results["listed"] = [o["Key"] for o in s3.list_objects_v2(Bucket=data, Prefix="train/")[
    "Contents"]]
attempt("copy in", lambda: s3.copy_object(
    Bucket=data, Key=out + "/copied", CopySource={{"Bucket": data, "Key": "train/part-0"}}))
folder = pathlib.Path("/tmp/folder")
(folder / "sub").mkdir(parents=True)
for number in range(3):
    (folder / "sub" / f"f{{number}}.txt").write_text(f"file {{number}}")
aws = str(pathlib.Path(sys.executable).parent / "aws")
def cli(*arguments):
    done = subprocess.run([aws, "s3", *arguments], capture_output=True, text=True)
    return [done.returncode, done.stderr[-300:]]
results["sync"] = cli("sync", str(folder), f"s3://{{data}}/{{out}}/synced/")
results["cp"] = cli("cp", str(folder / "sub" / "f0.txt"), f"s3://{{data}}/{{out}}/cp.txt")
results["cp outside"] = cli("cp", str(folder / "sub" / "f0.txt"), f"s3://{{victim}}/cp.txt")
results["sync back"] = cli("sync", f"s3://{{data}}/{{out}}/synced/", "/tmp/back")
results["synced back"] = sorted(str(p.relative_to("/tmp/back")) for p in
                                pathlib.Path("/tmp/back").rglob("*.txt"))
attempt("delete own", lambda: s3.delete_object(Bucket=data, Key=out + "/copied"))
s3.put_object(Bucket=data, Key=out + "/several/1", Body=b"1")
attempt("delete own objects", lambda: s3.delete_objects(Bucket=data, Delete={{"Objects": [
    {{"Key": out + "/several/1"}}, {{"Key": out + "/big"}}]}}))
finish()
"""
    )
    described = run_job(
        api_server, tmp_path, code, TrainingJobName=name, output=f"s3://{data}/out",
        channels={"train": f"s3://{data}/train/"},
    )  # fmt: skip
    assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")
    results = json.loads(model_file(api_server, described, "results.json"))
    for label in ("get other bucket", "get sibling", "put other bucket", "put file body",
                  "put channel", "put beside output", "delete other bucket", "delete channel",
                  "list other bucket", "list sibling", "copy out", "multipart outside",
                  "delete bucket", "create bucket", "delete objects"):  # fmt: skip
        assert results[label] == "AccessDenied", (label, results[label])
    assert results["head other bucket"] == "403"
    assert results["cp outside"][0] != 0 and "AccessDenied" in results["cp outside"][1]
    # Nothing outside changed.
    assert s3.get_object(Bucket=victim, Key="model.tar.gz")["Body"].read() == b"the victim's model"
    assert s3.get_object(Bucket=data, Key="train/part-0")["Body"].read() == b"0123456789" * 10
    assert [b["Name"] for b in s3.list_buckets()["Buckets"] if b["Name"].startswith(victim)] == [
        victim
    ]
    assert "Contents" not in s3.list_objects_v2(Bucket=victim, Prefix="mpu")
    # Inside: everything worked.
    assert results["multipart"] == "ok" and results["multipart ok"] is True
    assert results["ranged"] == "56789"
    assert results["listed"] == ["train/part-0"]
    assert results["copy in"] == "ok" and results["delete own"] == "ok"
    assert results["delete own objects"] == "ok"
    assert s3.get_object(Bucket=data, Key="private/secret")["Body"].read() == b"not the job's"
    assert results["sync"][0] == 0, results["sync"]
    assert results["cp"][0] == 0, results["cp"]
    assert results["sync back"][0] == 0, results["sync back"]
    assert results["synced back"] == ["sub/f0.txt", "sub/f1.txt", "sub/f2.txt"]
    synced = s3.list_objects_v2(Bucket=data, Prefix=f"{out}/synced/")["Contents"]
    assert sorted(o["Key"] for o in synced) == [f"{out}/synced/sub/f{n}.txt" for n in range(3)]
    left = [o["Key"] for o in s3.list_objects_v2(Bucket=data, Prefix=f"{out}/")["Contents"]]
    assert f"{out}/big" not in left and f"{out}/several/1" not in left


def test_keys_no_file_can_hold_are_a_400_and_nothing_is_stored(api_server: ApiServer) -> None:
    s3 = api_server.client("s3", config=NO_RETRIES)
    bucket = unique("keys")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="an-object", Body=b"x")
    refused = {
        "a 300-byte name": f"folder/{'n' * 300}",
        "a 1000-character key": "k" * 1000,
        "a key under an object": "an-object/inside",
    }
    for label, key in refused.items():
        with pytest.raises(ClientError) as caught:
            s3.put_object(Bucket=bucket, Key=key, Body=b"data")
        error = caught.value.response
        assert error["ResponseMetadata"]["HTTPStatusCode"] == 400, (label, error)
        with pytest.raises(ClientError) as caught:
            s3.create_multipart_upload(Bucket=bucket, Key=key)
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400, label
    message = _error(s3, bucket, f"folder/{'n' * 300}")
    assert message["Code"] == "KeyTooLongError"
    assert "300 bytes" in message["Message"] and "255" in message["Message"]
    assert "exists" in _error(s3, bucket, "an-object/inside")["Message"]
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert listed == ["an-object"]
    assert sorted(p.name for p in (api_server.home / "s3" / bucket).iterdir()) == ["an-object"]
    # The server's key still reaches everything else.
    s3.put_object(Bucket=bucket, Key=f"folder/{'n' * 255}", Body=b"longest name")
    assert s3.get_object(Bucket=bucket, Key=f"folder/{'n' * 255}")["Body"].read() == (
        b"longest name"
    )


def _error(s3: Any, bucket: str, key: str) -> Mapping[str, Any]:
    with pytest.raises(ClientError) as caught:
        s3.put_object(Bucket=bucket, Key=key, Body=b"data")
    return caught.value.response["Error"]


def test_a_streaming_upload_is_checked_and_goes_through(api_server: ApiServer) -> None:
    """aws-chunked bodies (STREAMING-UNSIGNED-PAYLOAD-TRAILER, as boto3 sends over HTTPS), sent
    in pieces unrelated to their chunks: to a key no file can hold, a 400; else taken whole."""
    s3 = api_server.client("s3", config=NO_RETRIES)
    bucket = unique("stream")
    s3.create_bucket(Bucket=bucket)
    payload = b"streamed " * 100_000
    status, answer = _stream(api_server, f"{bucket}/{'n' * 300}", payload)
    assert status == 400 and b"KeyTooLongError" in answer, answer
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)
    status, answer = _stream(api_server, f"{bucket}/streamed", payload)
    assert status == 200, answer
    assert s3.get_object(Bucket=bucket, Key="streamed")["Body"].read() == payload


def _stream(server: ApiServer, path: str, payload: bytes) -> tuple[int, bytes]:
    checksum = base64.b64encode(zlib.crc32(payload).to_bytes(4, "big")).decode()
    pieces = [payload[i : i + 65536] for i in range(0, len(payload), 65536)]
    body = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces)
    body += f"0\r\nx-amz-checksum-crc32:{checksum}\r\n\r\n".encode()
    url = f"{server.env['AWS_ENDPOINT_URL_S3']}/{path}"
    headers = {
        "Content-Encoding": "aws-chunked",
        "X-Amz-Decoded-Content-Length": str(len(payload)),
        "X-Amz-Trailer": "x-amz-checksum-crc32",
        "X-Amz-Content-SHA256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
    }
    signed = _signed(server, "PUT", url, headers)
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.netloc, timeout=30)
    connection.putrequest("PUT", parts.path, skip_host=True, skip_accept_encoding=True)
    for name, value in {**signed, "Host": parts.netloc, "Content-Length": str(len(body))}.items():
        connection.putheader(name, value)
    connection.endheaders()
    try:
        for start in range(0, len(body), 40000):
            connection.send(body[start : start + 40000])
    except ConnectionError:
        pass  # refused before the whole body was sent: its answer is there to read
    response = connection.getresponse()
    return response.status, response.read()


def test_an_ambiguous_request_never_reaches_rclone(api_server: ApiServer) -> None:
    """Content-Length with Transfer-Encoding (request smuggling's way in) is a 400, and so is a
    request claiming two keys."""
    s3 = api_server.client("s3", config=NO_RETRIES)
    bucket = unique("smuggle")
    s3.create_bucket(Bucket=bucket)
    url = f"{api_server.env['AWS_ENDPOINT_URL_S3']}/{bucket}/x"
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port
    assert host is not None and port is not None
    smuggled = (f"PUT /{bucket}/x HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Length: 4\r\n"
                "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n").encode()  # fmt: skip
    with socket.create_connection((host, port), timeout=10) as raw:
        raw.sendall(smuggled)
        assert raw.recv(65536).startswith(b"HTTP/1.1 400 ")
    signed = _signed(api_server, "GET", url + "?X-Amz-Credential=OMJ0/20240101", {})
    connection = http.client.HTTPConnection(parts.netloc, timeout=10)
    connection.request("GET", f"/{bucket}/x?X-Amz-Credential=OMJ0/20240101", headers=signed)
    assert connection.getresponse().status == 400
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)


def _signed(server: ApiServer, method: str, url: str, headers: dict[str, str]) -> dict[str, str]:
    credentials = Credentials(server.env["AWS_ACCESS_KEY_ID"], server.env["AWS_SECRET_ACCESS_KEY"])
    request = AWSRequest(method=method, url=url, headers=headers)
    SigV4Auth(credentials, "s3", server.env["AWS_REGION"]).add_auth(request)
    return dict(request.headers.items())
