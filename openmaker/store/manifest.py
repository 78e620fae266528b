"""SageMaker manifest files: a JSON array `[{"prefix": "s3://b/p/"}, "rel/a", "rel/b", ...]`."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import obstore

from openmaker.store.errors import translate_errors
from openmaker.store.location import Location, StoreError


@dataclass(frozen=True)
class ManifestEntry:
    """One object named by a manifest: where it is, and its path relative to the prefix."""

    location: Location
    relative: str
    size: int


def parse_manifest(data: bytes, manifest_uri: str) -> tuple[str, list[str]]:
    """The prefix URI and the relative keys, in the manifest's order."""
    try:
        items = json.loads(data)
    except ValueError as exc:
        raise StoreError(f"manifest {manifest_uri} is not valid JSON: {exc}") from None
    if (
        not isinstance(items, list)
        or not items
        or not isinstance(items[0], dict)
        or not isinstance(items[0].get("prefix"), str)
    ):
        raise StoreError(
            f'manifest {manifest_uri} must be a JSON array starting with {{"prefix": "s3://..."}}'
        )
    relatives = items[1:]
    if not all(isinstance(r, str) and r for r in relatives):
        raise StoreError(f"manifest {manifest_uri}: every entry after the prefix must be a key")
    return items[0]["prefix"], relatives


@translate_errors
async def manifest_entries(prefix: Location, relatives: list[str]) -> list[ManifestEntry]:
    """Look up every entry; a missing object is an error naming it."""

    async def one(relative: str) -> ManifestEntry:
        location = Location(prefix.store, prefix.key + relative, prefix.uri + relative)
        try:
            meta = await obstore.head_async(location.store, location.key)
        except FileNotFoundError:
            raise StoreError(f"manifest entry {location.uri} does not exist") from None
        return ManifestEntry(location, relative, meta["size"])

    return list(await asyncio.gather(*(one(r) for r in relatives)))
