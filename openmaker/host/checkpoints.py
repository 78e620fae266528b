"""Checkpoints: `CheckpointConfig.S3Uri` copied into `LocalPath` before the code starts, and the
folder written back (new and changed files uploaded, removed ones deleted) when it ends.
"""

from __future__ import annotations

import asyncio
from pathlib import Path, PurePosixPath

from openmaker.host.events import Emit
from openmaker.host.files import regular_files
from openmaker.host.layout import CONTAINER_ROOT, checkpoint_local_path
from openmaker.host.progress import ProgressMeter
from openmaker.host.spec import HostSpec
from openmaker.store import (
    Download,
    Location,
    StoreError,
    delete_keys,
    download_all,
    list_prefix,
    resolve,
    safe_destination,
    upload_file,
)


def checkpoint_dir(spec: HostSpec) -> Path | None:
    """The host folder behind LocalPath: inside the /opt/ml tree when LocalPath is under it."""
    if not spec.request.get("CheckpointConfig"):
        return None
    local = PurePosixPath(checkpoint_local_path(spec))
    if local.is_relative_to(CONTAINER_ROOT):
        return spec.ml_dir.joinpath(*local.relative_to(CONTAINER_ROOT).parts)
    return spec.work_dir / "checkpoints"


def _remote(spec: HostSpec) -> Location:
    uri = spec.request["CheckpointConfig"]["S3Uri"]
    location = resolve(uri, spec.settings, spec.store_env)
    # A checkpoint URI names a folder: `s3://b/ckpt` must not pick up `s3://b/ckpt-old`.
    key = location.key if not location.key or location.key.endswith("/") else location.key + "/"
    return Location(location.store, key, uri)


def restore_checkpoints(spec: HostSpec, emit: Emit) -> None:
    folder = checkpoint_dir(spec)
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    remote = _remote(spec)

    async def restore() -> None:
        objects = await list_prefix(remote)
        downloads = [
            Download(
                remote.store, o.key, o.size, safe_destination(folder, o.key[len(remote.key) :])
            )
            for o in objects
        ]
        meter = ProgressMeter("Downloading", sum(d.size for d in downloads), emit)
        await download_all(downloads, meter.add)
        meter.finish()

    try:
        asyncio.run(restore())
    except StoreError as exc:
        uri = spec.request["CheckpointConfig"]["S3Uri"]
        raise StoreError(f"cannot restore the checkpoints from {uri}: {exc}") from None


def save_checkpoints(spec: HostSpec, emit: Emit) -> None:
    folder = checkpoint_dir(spec)
    if folder is None or not folder.is_dir():
        return
    remote = _remote(spec)

    async def save() -> None:
        local = regular_files(folder)
        stale = [o.key for o in await list_prefix(remote) if o.key[len(remote.key) :] not in local]
        meter = ProgressMeter("Uploading", sum(p.stat().st_size for p in local.values()), emit)
        await asyncio.gather(
            *(upload_file(path, remote.child(name), meter.add) for name, path in local.items())
        )
        await delete_keys(remote.store, stale)
        meter.finish()

    asyncio.run(save())
