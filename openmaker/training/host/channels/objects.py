"""What a channel holds for this host: its objects (or augmented manifest lines) in order.

Shared by every input mode: File downloads them, Pipe streams them, FastFile shows them.
The order is the prefix's sorted keys or the manifest's own order; ShuffleConfig reorders it
per epoch and ShardedByS3Key keeps this host's share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from obstore.store import ObjectStore

from openmaker.store import (
    StoreError,
    UnsafeKeyError,
    list_prefix,
    read_object,
    relative_to_prefix,
    resolve,
    safe_destination,
)
from openmaker.store.keys import checked_relative
from openmaker.store.manifest import (
    AttributeValue,
    check_entry,
    check_reference,
    manifest_entries,
    parse_augmented_manifest,
    parse_manifest,
)
from openmaker.training.host.channels.sharding import shard
from openmaker.training.host.channels.shuffle import shuffled
from openmaker.training.host.plan import ChannelPlan, DataType
from openmaker.training.host.spec import HostSpec

T = TypeVar("T")


class ChannelError(Exception):
    """A channel could not be read; the message names the channel and the object."""


@dataclass(frozen=True)
class ChannelObject:
    store: ObjectStore
    key: str
    # -1 when not known yet (an augmented manifest's reference).
    size: int
    # Its path inside the channel folder (File mode).
    relative: str
    uri: str


# One augmented manifest line: an object, or an attribute's text, per AttributeNames entry.
AugmentedLine = list[ChannelObject | bytes]


async def list_channel(spec: HostSpec, channel: ChannelPlan) -> list[ChannelObject]:
    """Every object of an S3Prefix or ManifestFile channel, in the channel's own order."""
    name, uri = channel.name, channel.uri
    root = spec.ml_dir / channel.folder
    try:
        location = resolve(uri, spec.store)
        if channel.data_type == DataType.MANIFEST:
            prefix_uri, relatives = parse_manifest(await read_object(location), uri)
            # Check every path before looking anything up: a crafted entry reads and writes
            # nothing.
            check_reference(uri, prefix_uri)
            for relative in relatives:
                check_entry(uri, relative)
                safe_destination(root, relative)
            prefix = resolve(prefix_uri, spec.store)
            return [
                ChannelObject(e.location.store, e.location.key, e.size, e.relative, e.location.uri)
                for e in await manifest_entries(prefix, relatives)
            ]
        objects = await list_prefix(location)
        if not objects:
            # SageMaker refuses an empty channel too, rather than train on nothing.
            raise ChannelError(
                f"channel {name!r}: no objects found under {uri}; check that "
                "the bucket exists and that objects exist under that prefix"
            )
        # A local folder's key ends in "/" where its URI may not.
        base = uri
        if location.key.endswith("/") and not base.endswith("/"):
            base += "/"
        found = []
        for obj in objects:
            relative = relative_to_prefix(obj.key, location.key)
            checked_relative(root, relative)
            uri = base + obj.key[len(location.key) :]
            found.append(ChannelObject(location.store, obj.key, obj.size, relative, uri))
        return found
    except UnsafeKeyError as exc:
        raise ChannelError(f"channel {name!r}: {exc}") from None
    except StoreError as exc:
        raise ChannelError(f"channel {name!r}: cannot read {uri}: {exc}") from None


async def augmented_lines(spec: HostSpec, channel: ChannelPlan) -> list[AugmentedLine]:
    """The lines of an augmented manifest channel, each as its attributes' values."""
    name, uri = channel.name, channel.uri
    try:
        data = await read_object(resolve(uri, spec.store))
        parsed = parse_augmented_manifest(data, uri, list(channel.attribute_names))
        for line in parsed:  # every reference checked before any is read
            for value in line:
                if not isinstance(value, bytes):
                    check_reference(uri, value[1])
        return [[_value(spec, value) for value in line] for line in parsed]
    except UnsafeKeyError as exc:
        raise ChannelError(f"channel {name!r}: {exc}") from None
    except StoreError as exc:
        raise ChannelError(f"channel {name!r}: cannot read {uri}: {exc}") from None


def _value(spec: HostSpec, value: AttributeValue) -> ChannelObject | bytes:
    if isinstance(value, bytes):
        return value
    location = resolve(value[1], spec.store)
    return ChannelObject(location.store, location.key, -1, "", value[1])


def for_host(spec: HostSpec, channel: ChannelPlan, items: Sequence[T], epoch: int = 0) -> list[T]:
    """This host's share of `items` (ShardedByS3Key), in this epoch's order (ShuffleConfig).

    With a seed the whole list is shuffled first and the shares dealt from that order, so that,
    as on SageMaker, a host's share changes from epoch to epoch; without one, sorted keys are
    dealt. Either way every item goes to exactly one host in every epoch.
    """
    seed = channel.shuffle_seed
    mine = list(items) if seed is None else shuffled(items, seed, epoch)
    if channel.sharded:
        key = _shard_key(mine) if seed is None else None
        mine = shard(mine, spec.host_index, len(spec.hosts), key)
    return mine


def _shard_key(items: list[Any]) -> Any:
    # Objects are dealt in key order; augmented manifest lines in their own order.
    if items and isinstance(items[0], ChannelObject):
        return lambda item: item.key
    return None
