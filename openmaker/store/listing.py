"""Listing objects under a key prefix with S3's string-prefix semantics.

obstore lists by path segment (`data/train` does not match `data/train-a.csv`); S3 matches any
key that starts with the prefix. The last, partial segment is therefore matched by listing its
parent one level deep and descending only into the children that start with it.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

import obstore
from obstore.exceptions import InvalidPathError
from obstore.store import LocalStore

from openmaker.store.errors import translate_errors
from openmaker.store.keys import UnsafeKeyError
from openmaker.store.local_listing import list_local
from openmaker.store.location import Location

# obstore refuses to list a key with a control character or a `.`, `..` or empty segment, and
# names it only in its message.
_REFUSED_KEY = re.compile(r'Error parsing Path "(?P<key>.*?)": ', re.DOTALL)


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


@translate_errors
async def list_prefix(location: Location) -> list[ObjectInfo]:
    """Every object whose key starts with `location.key`, sorted by key; folder markers skipped.

    A key the store cannot name as a path (a newline in it, a `..` segment) is an
    UnsafeKeyError naming it: such an object could not be downloaded either.
    """
    try:
        return await _list_prefix(location)
    except InvalidPathError as exc:
        found = _REFUSED_KEY.search(str(exc))
        what = f"object key {found['key'].lstrip('/')!r}" if found else "an object key"
        raise UnsafeKeyError(
            f"{what} under {location.uri} cannot be held as a file: keys with control "
            "characters, or with empty, . or .. segments, are not supported"
        ) from None


async def _list_prefix(location: Location) -> list[ObjectInfo]:
    prefix = location.key
    store = location.store
    if isinstance(store, LocalStore):
        # A folder of this machine: read directly where that gives obstore's answer.
        local = await asyncio.to_thread(list_local, store.prefix or Path("/"), prefix)
        if local is not None:
            return [ObjectInfo(key, size) for key, size in sorted(local)]
    parent, _, partial = prefix.rpartition("/")
    if not partial:
        found = await _list_recursive(location, parent)
    else:
        level = await obstore.list_with_delimiter_async(location.store, parent or None)
        found = [
            ObjectInfo(meta["path"], meta["size"])
            for meta in level["objects"]
            if meta["path"].startswith(prefix)
        ]
        below = [p for p in level["common_prefixes"] if p.startswith(prefix)]
        for batch in await asyncio.gather(*(_list_recursive(location, p) for p in below)):
            found.extend(batch)
    return sorted((o for o in found if not o.key.endswith("/")), key=lambda o: o.key)


async def _list_recursive(location: Location, prefix: str) -> list[ObjectInfo]:
    objects: list[ObjectInfo] = []
    stream = obstore.list(location.store, prefix or None, chunk_size=1000)
    async for batch in stream:
        objects.extend(ObjectInfo(meta["path"], meta["size"]) for meta in batch)
    return objects
