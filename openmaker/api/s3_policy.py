"""What the S3 gate's front (`openmaker.api.s3_front`) refuses before a request reaches rclone,
decided from the request line and headers alone.

- A job's key (`openmaker.jobs.gate_keys`) outside the places its request names: S3's own
  `AccessDenied`, as an execution role's policy answers. rclone would answer `NoSuchBucket`,
  `NoSuchKey` or a 500 there, since its backend for the key shows only those places.
- Over the user's S3 server, any key but a running job's.
- Any key, writing to the embedded store an object that no file can hold (a name between
  slashes over 255 bytes, a key under an object, an object over a folder): a 400 saying why,
  where rclone answers 500.

The front checks no signature: rclone does, after it. A request claiming a job's key is refused
here only when that key could not do it anyway, so a forged claim learns nothing but that.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from openmaker.jobs.gate_keys import KEY_PREFIX, record_path

MAX_KEY_BYTES = 1024
MAX_NAME_BYTES = 255  # NAME_MAX: one file or folder name
MAX_HELD_BODY = 2 * 1024 * 1024  # a DeleteObjects of 1000 keys of 1024 bytes, with its XML
_V4_CREDENTIAL = re.compile(r"Credential=([^/,\s]*)/")
_V2_CREDENTIAL = re.compile(r"^AWS ([^:\s]+):")


@dataclass(frozen=True)
class Refusal:
    status: int
    code: str
    message: str
    resource: str

    def response(self, head_only: bool, close: bool) -> bytes:
        """The whole HTTP response, as S3 words an error."""
        request_id = secrets.token_hex(8).upper()
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error>'
            f"<Code>{self.code}</Code><Message>{escape(self.message)}</Message>"
            f"<Resource>{escape(self.resource)}</Resource><RequestId>{request_id}</RequestId>"
            f"<HostId>{request_id}</HostId></Error>"
        ).encode()
        reason = {400: "Bad Request", 403: "Forbidden"}.get(self.status, "Error")
        head = [
            f"HTTP/1.1 {self.status} {reason}",
            "Content-Type: application/xml",
            f"Content-Length: {0 if head_only else len(body)}",
            f"Date: {formatdate(usegmt=True)}",
            f"x-amz-request-id: {request_id}",
            f"x-amz-id-2: {request_id}",
            "Server: openmaker",
        ]
        if close:
            head.append("Connection: close")
        return "\r\n".join(head).encode() + b"\r\n\r\n" + (b"" if head_only else body)


@dataclass(frozen=True)
class Hold:
    """Decided on the whole body (at most MAX_HELD_BODY bytes): None to forward it."""

    decide: Callable[[bytes], Refusal | None]


def bad_request(message: str) -> Refusal:
    return Refusal(400, "InvalidRequest", message, "")


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    headers: list[tuple[str, str]]  # names in lower case, in the order received

    def header(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


class Policy:
    """The decisions, with each job key's record read when it changes. `store` is None when the
    gate is in front of the user's S3 server: only the jobs' keys are served there (the keys
    S3 takes are that server's to judge), and a key whose record is gone is refused here, as
    no link can be taken from a backend rclone still holds."""

    def __init__(self, home: Path, store: Path | None) -> None:
        self.home = home
        self.store = store
        self._records: dict[str, tuple[tuple[int, int], list[dict[str, object]]]] = {}

    def refusal(self, request: Request) -> Refusal | Hold | None:
        """None to forward the request unchanged, a Refusal to answer instead, or a Hold: the
        decision needs the body."""
        split = urlsplit(request.target)
        path = unquote(split.path, errors="surrogateescape")
        query = parse_qs(split.query, keep_blank_values=True)
        key_id = access_key(request, query)
        if isinstance(key_id, Refusal):
            return key_id
        bucket, _, key = path.removeprefix("/").partition("/")
        resource = path
        if not path.startswith("/") or any(p in (".", "..") for p in path.split("/")):
            return Refusal(400, "InvalidArgument", "A bucket or key has a `.` or `..` part.",
                           resource)  # fmt: skip
        if key_id is not None and key_id.startswith(KEY_PREFIX):
            # First the job's places: what lies outside them is not the job's to learn about.
            outside = self._job_refusal(key_id, request, bucket, key, query, resource)
            if outside is not None:
                return outside
        elif self.store is None:
            return Refusal(403, "AccessDenied" if key_id is None else "InvalidAccessKeyId",
                           "This endpoint serves only the keys of running jobs.",
                           resource)  # fmt: skip
        if key and request.method in ("PUT", "POST") and self.store is not None:
            return self._unstorable(self.store, bucket, key, resource)
        return None

    def _job_refusal(
        self,
        key_id: str,
        request: Request,
        bucket: str,
        key: str,
        query: dict[str, list[str]],
        resource: str,
    ) -> Refusal | Hold | None:
        grants = self._grants(key_id)
        if grants is None:
            return Refusal(403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does "
                           "not exist in our records.", resource)  # fmt: skip
        denied = Refusal(403, "AccessDenied", "Access Denied", resource)
        if not bucket:
            return None if request.method in ("GET", "HEAD") else denied  # ListBuckets: its own
        if key:
            source = request.header("x-amz-copy-source")
            if source and not _reaches(grants, *_copy_source(source[0]), write=False):
                return denied
            writes = request.method in ("PUT", "POST", "DELETE")
            return None if _reaches(grants, bucket, key, write=writes) else denied
        return self._bucket_refusal(grants, request, bucket, query, denied)

    def _bucket_refusal(
        self,
        grants: list[dict[str, object]],
        request: Request,
        bucket: str,
        query: dict[str, list[str]],
        denied: Refusal,
    ) -> Refusal | Hold | None:
        mine = [g for g in grants if g["bucket"] == bucket]
        if not mine:
            return denied
        if request.method == "POST" and "delete" in query:
            # DeleteObjects: its keys are in the body, decided once it is there.
            return Hold(lambda body: _delete_refusal(mine, bucket, body, denied))
        if request.method not in ("GET", "HEAD"):
            return denied  # creating, deleting or configuring a bucket: never a job's
        prefixes = query.get("prefix", [""])
        if len(prefixes) != 1:
            return bad_request("A listing names one prefix.")
        prefix = prefixes[0]
        # A prefix inside a place, or one leading to it (its listing shows only the way there).
        if any(prefix.startswith(str(g["folder"])) or str(g["folder"]).startswith(prefix)
               for g in mine):  # fmt: skip
            return None
        return denied

    def _grants(self, key_id: str) -> list[dict[str, object]] | None:
        if not key_id[len(KEY_PREFIX) :].isalnum():
            return None
        path = record_path(self.home, key_id)
        try:
            status = os.stat(path)
        except OSError:
            self._records.pop(key_id, None)
            return None
        version = (status.st_ino, status.st_mtime_ns)
        cached = self._records.get(key_id)
        if cached is not None and cached[0] == version:
            return cached[1]
        try:
            grants = json.loads(path.read_text())["grants"]
        except (OSError, ValueError, KeyError):
            return None
        self._records[key_id] = (version, grants)
        return grants

    def _unstorable(self, store: Path, bucket: str, key: str, resource: str) -> Refusal | None:
        """Why the store cannot keep `key` as a file, if it cannot."""
        size = len(key.encode("utf-8", "surrogateescape"))
        if size > MAX_KEY_BYTES:
            return Refusal(400, "KeyTooLongError", f"Your key is too long: {size} bytes, and this "
                           f"store takes at most {MAX_KEY_BYTES}.", resource)  # fmt: skip
        parts = key.split("/")
        for part in parts:
            length = len(part.encode("utf-8", "surrogateescape"))
            if length > MAX_NAME_BYTES:
                return Refusal(400, "KeyTooLongError", f"Your key has a part of {length} bytes "
                               f"between slashes ({part[:24]}...): this store keeps each object "
                               f"as a file, and a file or folder name holds at most "
                               f"{MAX_NAME_BYTES} bytes.", resource)  # fmt: skip
        if "" in parts[:-1] or "\0" in key:
            return Refusal(
                400,
                "InvalidArgument",
                "Your key has an empty part between slashes "
                "or a NUL character: this store cannot keep it as a file.",
                resource,
            )
        folder = store / bucket
        for depth, part in enumerate(parts):
            folder = folder / part
            kind = _kind(folder)
            if kind is None:
                return None
            last = depth == len(parts) - 1
            if not last and kind != "folder":
                taken = "/".join(parts[: depth + 1])
                return Refusal(
                    400,
                    "InvalidArgument",
                    f"The object {taken!r} exists: this store "
                    "keeps objects as files, so no key can go under it.",
                    resource,
                )
            if last and kind == "folder" and part:
                return Refusal(400, "InvalidArgument", f"Keys under {key + '/'!r} exist: this "
                               "store keeps them in a folder of that name, so no object can "
                               "take it.", resource)  # fmt: skip
        return None


def access_key(request: Request, query: dict[str, list[str]]) -> str | Refusal | None:
    """The access key the request claims (None for none); a Refusal when it is ambiguous."""
    found = []
    for value in request.header("authorization"):
        match = _V4_CREDENTIAL.search(value) or _V2_CREDENTIAL.search(value)
        if len(_V4_CREDENTIAL.findall(value)) > 1:
            return bad_request("The Authorization header names more than one credential.")
        found.append(match.group(1) if match else "")
    for value in query.get("X-Amz-Credential", []):
        found.append(value.split("/", 1)[0])
    found += query.get("AWSAccessKeyId", [])
    if len(found) > 1:
        return bad_request("Only one auth mechanism allowed; only the X-Amz-Algorithm query "
                           "parameter, Signature query string parameter or the Authorization "
                           "header should be specified.")  # fmt: skip
    return found[0] if found else None


def _copy_source(source: str) -> tuple[str, str]:
    path = unquote(source.split("?", 1)[0], errors="surrogateescape").removeprefix("/")
    bucket, _, key = path.partition("/")
    return bucket, key


def _delete_refusal(
    grants: list[dict[str, object]], bucket: str, body: bytes, denied: Refusal
) -> Refusal | None:
    """A DeleteObjects is the job's only when every key it names is in a writable place."""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return Refusal(400, "MalformedXML", "The XML you provided was not well-formed or did "
                       "not validate against our published schema.", denied.resource)  # fmt: skip
    keys = [e.text or "" for e in root.iter() if e.tag.rpartition("}")[2] == "Key"]
    return None if all(_reaches(grants, bucket, key, write=True) for key in keys) else denied


def _reaches(grants: list[dict[str, object]], bucket: str, key: str, write: bool) -> bool:
    if any(p in (".", "..") for p in key.split("/")):
        return False
    return any(
        g["bucket"] == bucket and key.startswith(str(g["folder"])) and (g["write"] or not write)
        for g in grants
    )


def _kind(path: Path) -> str | None:
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError):
        return "other"
    return "folder" if stat.S_ISDIR(mode) else "other"
