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


# One value of an augmented manifest line: the URI of an object (a `*-ref` attribute), or the
# bytes of any other attribute's value.
AttributeValue = tuple[str, str] | bytes


def parse_augmented_manifest(
    data: bytes, manifest_uri: str, attribute_names: list[str]
) -> list[list[AttributeValue]]:
    """For every line (blank lines skipped), the values of `attribute_names` in that order.

    A `*-ref` attribute gives ("ref", uri); any other gives its text: a string as it is, any
    other JSON value as JSON.
    """
    lines: list[list[AttributeValue]] = []
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise StoreError(f"augmented manifest {manifest_uri} line {number}: {exc}") from None
        if not isinstance(item, dict):
            raise StoreError(
                f"augmented manifest {manifest_uri} line {number} is not a JSON object"
            )
        values: list[AttributeValue] = []
        for name in attribute_names:
            if name not in item:
                raise StoreError(
                    f"augmented manifest {manifest_uri} line {number} has no attribute {name!r}"
                )
            value = item[name]
            if name.endswith("-ref"):
                if not isinstance(value, str) or not value.startswith("s3://"):
                    raise StoreError(
                        f"augmented manifest {manifest_uri} line {number}: {name!r} must be "
                        "an s3:// URI"
                    )
                values.append(("ref", value))
            else:
                text = value if isinstance(value, str) else json.dumps(value)
                values.append(text.encode())
        lines.append(values)
    return lines
