"""A job's own key to the S3 gate: made when the job starts, dead when it ends, and reaching only
the places its request names (in the embedded store, or on the user's S3 server). Which places
those are is its kind's (openmaker/training/access.py for a training job); the worker mints and
revokes the key, the API's S3 front checks it.

Each key is a record, `$OPENMAKER_HOME/gate/keys/<key id>.json` (0600), that the endpoint's
auth proxy (`openmaker.api.gate_proxy`) reads to answer with the key's secret and a backend
that shows only the key's places. The backend reaches each place through a link to its bucket
under `gate/views/<key id>` (itself a link to the folder holding them): revoking a key replaces
`gate/views/<key id>` by a plain file, so a backend rclone still holds in its cache (it asks the
proxy again only after 5 minutes) finds nothing and can create nothing there from then on.
Over the user's S3 server there is nothing to link: the gate's front refuses every request of a
key without a record (`openmaker.api.s3_policy`).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from openmaker.files import replace_whole
from openmaker.store.location import (
    DEFAULT_RETRY_SECONDS,
    S3Endpoint,
    StoreSettings,
    code_store_environment,
    s3_folder_entries,
)

KEY_PREFIX = "OMJ"
# rclone asks the proxy again after 5 minutes: a revoked key's tombstone outlives that.
TOMBSTONE_SECONDS = 600


@dataclass(frozen=True)
class Grant:
    """A folder of a bucket (`folder` "" is the whole bucket, else it ends with "/")."""

    bucket: str
    folder: str
    write: bool


@dataclass(frozen=True)
class Place:
    """A place a job's request names: an S3 URI, a folder or a prefix, to read or to write."""

    uri: str
    is_folder: bool
    write: bool


@dataclass(frozen=True)
class JobKey:
    access_key_id: str
    secret_access_key: str


def gate_dir(home: Path) -> Path:
    return home / "gate"


def record_path(home: Path, key_id: str) -> Path:
    return gate_dir(home) / "keys" / f"{key_id}.json"


def view_path(home: Path, key_id: str) -> Path:
    return gate_dir(home) / "views" / key_id


# The entries directly in a folder of a bucket ("" or ending in "/"): (name, is a folder).
Lister = Callable[[str, str], list[tuple[str, bool]]]


def local_lister(store: Path) -> Lister:
    """The entries of the embedded store's folders."""

    def entries(bucket: str, folder: str) -> list[tuple[str, bool]]:
        try:
            found = list(os.scandir(store / bucket / folder))
        except OSError:
            return []
        return [(e.name, e.is_dir(follow_symlinks=False)) for e in found]

    return entries


def grants_for(places: list[Place], lister: Lister) -> list[Grant]:
    """What a job's code may reach of `places`. Places outside the object store (file://) are
    not the endpoint's."""
    grants = []
    for uri, is_folder, write in ((p.uri, p.is_folder, p.write) for p in places):
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or not _safe_name(parsed.netloc):
            continue
        key = parsed.path.lstrip("/")
        segments = key.removesuffix("/").split("/") if key else []
        if not all(_safe_name(part) for part in segments):
            continue  # `..` and the like: validation refuses them; never widen a grant by them
        folder = _covering_folder(lister, parsed.netloc, key, is_folder)
        grants.append(Grant(parsed.netloc, folder, write))
    return _merged(grants)


def _safe_name(part: str) -> bool:
    # rclone's combine names a folder before "=": a folder with one in its name cannot be given.
    return part not in ("", ".", "..") and "=" not in part


def _covering_folder(lister: Lister, bucket: str, key: str, is_folder: bool) -> str:
    """The narrowest folder that holds every object under the S3 prefix `key`: the folder it
    names, or (a prefix like `data/train` that also matches `data/train-a`) its parent."""
    if key == "" or key.endswith("/"):
        return key
    parent, _, last = key.rpartition("/")
    parent = f"{parent}/" if parent else ""
    if is_folder:
        return f"{key}/"
    if [e for e in lister(bucket, parent) if e[0].startswith(last)] == [(last, True)]:
        return f"{key}/"
    return parent


def _merged(grants: list[Grant]) -> list[Grant]:
    """One grant per folder, none inside another (combine cannot nest them): an outer folder
    wins; of two grants of one folder, the writable one."""
    result: list[Grant] = []
    for grant in sorted(grants, key=lambda g: (g.bucket, g.folder, not g.write)):
        if any(g.bucket == grant.bucket and grant.folder.startswith(g.folder) for g in result):
            continue
        result.append(grant)
    return result


def mint(
    home: Path,
    job_name: str,
    places: list[Place],
    upstream: S3Endpoint | None = None,
    retry_seconds: float = DEFAULT_RETRY_SECONDS,
    holder: str = "code",
) -> JobKey:
    """A new key for the job (run by its worker, whose liveness keeps the key alive), to the
    embedded store or to the user's S3 server `upstream`. `holder` says whose it is: the job's
    code's, or its hosts' on a Ray cluster (openmaker/training/ray_store.py); both are revoked
    with the job."""
    store = home / "s3"
    gate = gate_dir(home)
    for sub in ("keys", "views"):
        (gate / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(gate, 0o700)
    _sweep_tombstones(gate / "views")
    key = JobKey(KEY_PREFIX + secrets.token_hex(9).upper(), secrets.token_urlsafe(30))
    if upstream is not None:
        # No folders to link: the gate's front refuses the key once its record is gone.
        grants = grants_for(places, partial(_s3_entries, upstream, retry_seconds))
        _write_record(home, key, job_name, grants, holder)
        return key
    grants = grants_for(places, local_lister(store))
    folder = gate / "views" / f".{key.access_key_id}.d"
    folder.mkdir(mode=0o700)
    linked: list[Grant] = []
    for grant in grants:
        target = store / grant.bucket / grant.folder
        if grant.write:
            target.mkdir(parents=True, exist_ok=True)
        elif not target.is_dir():
            continue  # nothing to read there (the channel fails the job anyway)
        # To the bucket, not the place: rclone removes a folder it has emptied (the place's own
        # folder too, when the code deletes its last object), and a link there would go with
        # it, the next write landing in this folder instead of the store.
        os.symlink(store / grant.bucket, folder / str(len(linked)))
        linked.append(grant)
    os.symlink(folder.name, view_path(home, key.access_key_id))
    _write_record(home, key, job_name, linked, holder)
    return key


def _write_record(home: Path, key: JobKey, job_name: str, grants: list[Grant], holder: str) -> None:
    record = {
        "secret_access_key": key.secret_access_key,
        "job": job_name,
        "holder": holder,
        "worker": [os.getpid(), _start_time()],
        "grants": [asdict(g) for g in grants],
    }
    replace_whole(record_path(home, key.access_key_id), json.dumps(record), 0o600)


def revoke(home: Path, key_id: str) -> None:
    """Refuse the key from now on, also to a backend rclone has cached."""
    record_path(home, key_id).unlink(missing_ok=True)
    view = view_path(home, key_id)
    if not os.path.lexists(view):
        return
    tombstone = view.with_name(f".{key_id}.tomb")
    replace_whole(tombstone, "revoked\n", 0o600)
    os.replace(tombstone, view)  # a file where the link was: nothing resolves under it
    _remove_tree(view.with_name(f".{key_id}.d"))


def revoke_job(home: Path, job_name: str) -> None:
    """Revoke every key of the job (those of earlier attempts too)."""
    for key_id, record in records(home):
        if record.get("job") == job_name:
            revoke(home, key_id)


def records(home: Path) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted((gate_dir(home) / "keys").glob(f"{KEY_PREFIX}*.json")):
        try:
            found.append((path.stem, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue
    return found


def revoke_orphans(home: Path, worker_lost: Callable[[int, int | None], bool]) -> None:
    """Revoke the keys whose worker is gone (killed before it could revoke them)."""
    for key_id, record in records(home):
        pid, started = record.get("worker") or (0, None)
        if worker_lost(pid, started):
            revoke(home, key_id)


def _start_time() -> int | None:
    """This process's start (field 22 of /proc/self/stat): a reused PID is not taken for it."""
    try:
        stat = Path("/proc/self/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _remove_tree(folder: Path) -> None:
    """The view folder holds links: unlink them, never follow them (and remove a folder made
    where one was, by an rclone of a key made before links went to buckets)."""
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
    os.rmdir(folder)


def _sweep_tombstones(views: Path) -> None:
    cutoff = time.time() - TOMBSTONE_SECONDS
    for entry in os.scandir(views):
        if (
            entry.name.startswith(KEY_PREFIX)
            and entry.is_file(follow_symlinks=False)
            and entry.stat(follow_symlinks=False).st_mtime < cutoff
        ):
            os.unlink(entry.path)


def _s3_entries(
    upstream: S3Endpoint, retry_seconds: float, bucket: str, folder: str
) -> list[tuple[str, bool]]:
    return s3_folder_entries(upstream, bucket, folder, retry_seconds)


def code_environment(
    home: Path, job_name: str, places: list[Place], store: StoreSettings
) -> dict[str, str]:
    """The code's store variables: for a server's gate (a server's job), with a new key of the
    job's own to `places`; otherwise those of the S3 server in use for a job the CLI runs (or
    none). The gate's keys reach the S3 server in use, else the embedded store."""
    code_env = code_store_environment(store)
    if not store.gate_url:
        return code_env
    key = mint(home, job_name, places, store.endpoint, store.retry_seconds)
    return {
        **code_env,
        "AWS_ACCESS_KEY_ID": key.access_key_id,
        "AWS_SECRET_ACCESS_KEY": key.secret_access_key,
    }
