"""Object store URIs (`s3://`, `file://`, local paths) resolved to an obstore store and a prefix.

`s3://bucket/key` means the S3-compatible server of the store settings (AWS_ENDPOINT_URL_S3 or
AWS_ENDPOINT_URL, see openmaker/settings.py) when one is configured, and otherwise the embedded
store: the folder `$OPENMAKER_HOME/s3/bucket`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

import obstore
from obstore.store import LocalStore, ObjectStore, S3Store

if TYPE_CHECKING:  # obstore's option types exist in its stubs only
    from obstore.store import ClientConfig, RetryConfig, S3Config

from openmaker.settings import DEFAULT_RETRY_SECONDS, S3Endpoint, StoreSettings
from openmaker.store.errors import StoreError

__all__ = ["DEFAULT_RETRY_SECONDS", "Location", "S3Endpoint", "StoreSettings"]


@dataclass(frozen=True)
class Location:
    """A place in an object store: `key` is a string prefix (S3 semantics), never a path."""

    store: ObjectStore
    key: str
    uri: str

    def child(self, *parts: str) -> Location:
        """The location of `parts` below this one, as a folder (joined with `/`)."""
        suffix = "/".join(p.strip("/") for p in parts if p.strip("/"))
        base = self.key.rstrip("/")
        key = f"{base}/{suffix}" if base else suffix
        uri = f"{self.uri.rstrip('/')}/{suffix}"
        return Location(self.store, key, uri)


# How long the server's S3 endpoint may keep showing a folder's listing from before a direct
# write: a job through the server waits this long after writing its artifacts. Short, since
# every job pays it; not zero (openmaker/api/s3_endpoint.py says why).
EMBEDDED_ENDPOINT_LISTING_SECONDS = 0.1


_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def store_environment(store: StoreSettings) -> dict[str, str]:
    """The variables that reach the S3 server in use; none for the embedded store."""
    endpoint = store.endpoint
    if endpoint is None:
        return {}
    credentials = (endpoint.access_key_id, endpoint.secret_access_key, endpoint.session_token)
    return {
        "AWS_ENDPOINT_URL_S3": endpoint.url,
        **{name: value for name, value in zip(_CREDENTIALS, credentials, strict=True) if value},
    }


def code_store_environment(store: StoreSettings) -> dict[str, str]:
    """The variables a job's code needs to reach the object store: a server's gate when one
    runs (without a key: the job's own is added by its worker, see
    `openmaker.jobs.gate_keys`), else those of the S3 server in use (a job the CLI runs, or a
    server's without a gate)."""
    if store.gate_url:
        return {"AWS_ENDPOINT_URL_S3": store.gate_url}
    variables = store_environment(store)
    if store.code_without_credentials:
        variables = {k: v for k, v in variables.items() if k not in _CREDENTIALS}
    return variables


def s3_folder_entries(
    endpoint: S3Endpoint, bucket: str, folder: str, retry: float = DEFAULT_RETRY_SECONDS
) -> list[tuple[str, bool]]:
    """The names directly in `folder` ("" or ending in "/") of a bucket of the S3 server, each
    with whether it is a folder (a common prefix)."""
    store = _s3_store(endpoint, bucket, retry)
    listed = obstore.list_with_delimiter(store, folder.rstrip("/") or None)
    entries = [(p.rstrip("/").rpartition("/")[2], True) for p in listed["common_prefixes"]]
    return entries + [(o["path"].rpartition("/")[2], False) for o in listed["objects"]]


def split_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b` → (`bucket`, `a/b`)."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StoreError(f"not an S3 URI: {uri!r} (expected s3://bucket/key)")
    return parsed.netloc, parsed.path.lstrip("/")


def resolve(uri: str, store: StoreSettings) -> Location:
    """Resolve `s3://bucket/key`, `file:///path` or an absolute local path."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        bucket, key = split_s3_uri(uri)
        if store.endpoint is None:
            return Location(_embedded_bucket(store.embedded_dir, bucket), key, uri)
        return Location(_s3_store(store.endpoint, bucket, store.retry_seconds), key, uri)
    if parsed.scheme == "file" or (parsed.scheme == "" and uri.startswith("/")):
        path = Path(unquote(parsed.path)).absolute()
        return _local_location(path, uri)
    if parsed.scheme == "" and uri:
        # A relative local folder, as typed on a command line.
        return _local_location(Path(uri).absolute(), uri)
    raise StoreError(f"unsupported URI {uri!r}: use s3://bucket/key, file:///path or a local path")


def _local_location(path: Path, uri: str) -> Location:
    # A local folder is a folder, not a string prefix: `/data/train` must not pick up
    # `/data/train-old`, so an existing directory gets a trailing separator.
    key = str(path).lstrip("/")
    if path.is_dir():
        key += "/"
    return Location(_local_root(), key, uri)


@cache
def _local_root() -> LocalStore:
    return LocalStore("/")


@cache
def _embedded_bucket(root: Path, bucket: str) -> LocalStore:
    if "/" in bucket or bucket in {".", ".."}:
        raise StoreError(f"invalid bucket name {bucket!r}")
    return LocalStore(root / bucket, mkdir=True)


def forget_s3_clients() -> None:
    """Drop the S3 clients made so far, with the keys they hold: a process that outlives the
    jobs it served (a Ray node's agent) keeps none of theirs."""
    _s3_store.cache_clear()


@cache
def _s3_store(endpoint: S3Endpoint, bucket: str, retry_seconds: float) -> S3Store:
    config: S3Config = {
        "endpoint": endpoint.url,
        "region": endpoint.region,
        # S3-compatible servers (rclone, MinIO, Ceph) address buckets by path.
        "virtual_hosted_style_request": False,
    }
    if endpoint.access_key_id and endpoint.secret_access_key:
        config["access_key_id"] = endpoint.access_key_id
        config["secret_access_key"] = endpoint.secret_access_key
        if endpoint.session_token:
            config["session_token"] = endpoint.session_token
    else:
        config["skip_signature"] = True
    client_options: ClientConfig = {
        "allow_http": endpoint.url.startswith("http://"),
        "timeout": "300s",
    }
    return S3Store(
        bucket,
        config=config,
        client_options=client_options,
        retry_config=retry_config(retry_seconds),
    )


def retry_seconds(store: ObjectStore) -> float:
    """How long a transient error (5xx, dropped connection) of `store` is retried before it is
    an error: what `resolve` configured an S3 server's store with (the setting), the default
    for a local folder."""
    config = store.retry_config if isinstance(store, S3Store) else None
    timeout = config.get("retry_timeout") if config else None
    return timeout.total_seconds() if timeout is not None else DEFAULT_RETRY_SECONDS


def retry_config(seconds: float) -> RetryConfig:
    """obstore's RetryConfig: exponential backoff with jitter, retried for `seconds`."""
    return {
        # The time limit, not a count, decides when to give up (10 retries would end within
        # seconds against a server that is restarting).
        "max_retries": 1000 if seconds > 0 else 0,
        "retry_timeout": timedelta(seconds=seconds),
        "backoff": {
            "init_backoff": timedelta(milliseconds=100),
            "max_backoff": timedelta(seconds=max(0.1, min(15.0, seconds / 4))),
            "base": 2.0,
        },
    }
