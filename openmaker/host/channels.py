"""Input channels in File mode: every object of the channel on local disk before the code starts.

FastFile channels are served the same way until lazy mounts arrive: the code sees the same
files, only sooner or later.
"""

from __future__ import annotations

import asyncio
from typing import Any

from openmaker.host.events import Emit
from openmaker.host.progress import ProgressMeter
from openmaker.host.spec import HostSpec
from openmaker.store import (
    Download,
    StoreError,
    UnsafeKeyError,
    download_all,
    list_prefix,
    read_object,
    relative_to_prefix,
    resolve,
    safe_destination,
)
from openmaker.store.manifest import manifest_entries, parse_manifest


class ChannelError(Exception):
    """A channel could not be read; the message names the channel and the object."""


async def plan_channel(spec: HostSpec, channel: dict[str, Any]) -> list[Download]:
    """The objects this host gets for `channel`, each with a destination inside its folder."""
    name = channel["ChannelName"]
    source = channel["DataSource"]["S3DataSource"]
    root = spec.ml_dir / "input" / "data" / name
    planned: list[Download] = []
    try:
        location = resolve(source["S3Uri"], spec.settings, spec.store_env)
        if source["S3DataType"] == "ManifestFile":
            prefix_uri, relatives = parse_manifest(await read_object(location), source["S3Uri"])
            prefix = resolve(prefix_uri, spec.settings, spec.store_env)
            # Check every path before looking anything up: a crafted entry writes nothing.
            for relative in relatives:
                safe_destination(root, relative)
            for entry in await manifest_entries(prefix, relatives):
                target = safe_destination(root, entry.relative)
                planned.append(
                    Download(entry.location.store, entry.location.key, entry.size, target)
                )
        elif source["S3DataType"] == "S3Prefix":
            objects = await list_prefix(location)
            if not objects:
                # SageMaker refuses an empty channel too, rather than train on nothing.
                raise ChannelError(
                    f"channel {name!r}: no objects found under {source['S3Uri']}; check that "
                    "the bucket exists and that objects exist under that prefix"
                )
            for obj in objects:
                target = safe_destination(root, relative_to_prefix(obj.key, location.key))
                planned.append(Download(location.store, obj.key, obj.size, target))
        else:
            raise ChannelError(
                f"channel {name!r}: S3DataType {source['S3DataType']} is not supported in File mode"
            )
    except UnsafeKeyError as exc:
        raise ChannelError(f"channel {name!r}: {exc}") from None
    except StoreError as exc:
        raise ChannelError(f"channel {name!r}: cannot read {source['S3Uri']}: {exc}") from None
    if source.get("S3DataDistributionType") == "ShardedByS3Key":
        planned = shard(planned, spec.host_index, len(spec.hosts))
    return planned


def shard(items: list[Download], index: int, count: int) -> list[Download]:
    """ShardedByS3Key: objects sorted by key and dealt round-robin; a host may get none."""
    ordered = sorted(items, key=lambda d: d.key)
    return ordered[index::count]


def file_channels(spec: HostSpec) -> list[dict[str, Any]]:
    return [c for c in spec.request.get("InputDataConfig") or [] if spec.input_mode(c) != "Pipe"]


def download_channels(spec: HostSpec, emit: Emit) -> int:
    """Download every File channel; returns the number of bytes."""
    return asyncio.run(_download_channels(spec, emit))


async def _download_channels(spec: HostSpec, emit: Emit) -> int:
    channels = file_channels(spec)
    for channel in channels:
        (spec.ml_dir / "input" / "data" / channel["ChannelName"]).mkdir(parents=True, exist_ok=True)
    plans = await asyncio.gather(*(plan_channel(spec, c) for c in channels))
    objects = [d for plan in plans for d in plan]
    total = sum(d.size for d in objects)
    meter = ProgressMeter("Downloading", total, emit)
    try:
        await download_all(objects, meter.add)
    except StoreError as exc:
        raise ChannelError(f"could not download input data: {exc}") from None
    meter.finish()
    return total
