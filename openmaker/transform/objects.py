"""A transform job's input objects (from an `S3Prefix` or a `ManifestFile`), how they are spread
over its instances, and where each one's output goes.

Objects are spread by key, in key order, round-robin; an object is never split across
instances. The output of the object at `<key relative to the input prefix>` is
`<S3OutputPath>/<that>.out` (the key is cut at the prefix's last `/`, as for training channels).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from openmaker.settings import StoreSettings
from openmaker.store.errors import StoreError
from openmaker.store.keys import relative_to_prefix
from openmaker.store.listing import list_prefix
from openmaker.store.location import Location, resolve
from openmaker.store.manifest import check_entry, check_reference, manifest_entries, parse_manifest
from openmaker.store.stream import Chunk, stream_object
from openmaker.store.transfer import read_object, upload_file


@dataclass(frozen=True)
class InputObject:
    location: Location
    relative: str  # its key relative to the input prefix: what its output is named after
    size: int


def input_objects(source: dict[str, str], store: StoreSettings) -> list[InputObject]:
    """Every input object, in key (or manifest) order; StoreError when they cannot be had."""
    uri = source["S3Uri"]
    location = resolve(uri, store)
    if source["S3DataType"] == "ManifestFile":
        return asyncio.run(_from_manifest(location))
    found = asyncio.run(list_prefix(location))
    if not found:
        raise StoreError(f"no object has the prefix {uri}")
    objects = []
    for item in found:
        relative = relative_to_prefix(item.key, location.key)
        child = Location(location.store, item.key, _uri_of(location, item.key))
        objects.append(InputObject(child, relative, item.size))
    return objects


def _uri_of(prefix: Location, key: str) -> str:
    return prefix.uri[: len(prefix.uri) - len(prefix.key)] + key


async def _from_manifest(manifest: Location) -> list[InputObject]:
    prefix_uri, relatives = parse_manifest(await read_object(manifest), manifest.uri)
    check_reference(manifest.uri, prefix_uri)
    for relative in relatives:
        check_entry(manifest.uri, relative)
    prefix = Location(manifest.store, _key_of(manifest, prefix_uri), prefix_uri)
    entries = await manifest_entries(prefix, relatives)
    return [InputObject(e.location, e.relative, e.size) for e in entries]


def _key_of(manifest: Location, uri: str) -> str:
    """The key `uri` names in the manifest's own bucket (check_reference made sure it is)."""
    bucket_uri = manifest.uri[: len(manifest.uri) - len(manifest.key)]
    return uri.removeprefix(bucket_uri)


def spread(objects: list[InputObject], instances: int) -> list[list[InputObject]]:
    """The objects of each instance: by key, round-robin (an object goes to one instance)."""
    shares: list[list[InputObject]] = [[] for _ in range(instances)]
    for index, item in enumerate(sorted(objects, key=lambda o: o.location.key)):
        shares[index % instances].append(item)
    return shares


def output_location(output_path: str, relative: str, store: StoreSettings) -> Location:
    return resolve(f"{output_path.rstrip('/')}/{relative}.out", store)


def chunks(item: InputObject) -> Iterator[Chunk]:
    """The object's bytes as it is read (memory: a chunk or a few parts, whatever its size)."""
    loop = asyncio.new_event_loop()
    # An async generator: closed below, so that its ranged reads end with the object's.
    stream = cast(
        AsyncGenerator[Chunk, None],
        stream_object(item.location.store, item.location.key, item.size),
    )
    try:
        while True:
            try:
                yield loop.run_until_complete(anext(stream))
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(stream.aclose())
        loop.close()


def upload(path: Path, location: Location) -> None:
    """Put the finished output file `path` at `location` (it appears whole or not at all)."""
    asyncio.run(upload_file(path, location))
