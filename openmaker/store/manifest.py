"""SageMaker manifest files: a JSON array `[{"prefix": "s3://b/p/"}, "rel/a", "rel/b", ...]`."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

import obstore

from openmaker.store.errors import StoreError, translate_errors
from openmaker.store.keys import UnsafeKeyError
from openmaker.store.location import Location

_DOT_SEGMENTS = frozenset({".", ".."})


class ForeignReference(UnsafeKeyError):
    """A manifest names something outside its own bucket (a local manifest: its own folder)."""


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


def check_reference(manifest_uri: str, uri: str) -> None:
    """Refuse `uri` unless it is in the manifest's own store and bucket, without `.` or `..`.

    Whoever can write to a bucket can write a manifest there; it must not reach what its
    writer could not (another bucket, or this machine's files). A local manifest (the owner's
    file:// channel) may name only what is in its own folder.
    """
    manifest, target = urlparse(manifest_uri), urlparse(uri)
    if _DOT_SEGMENTS.intersection(target.path.split("/")):
        raise ForeignReference(f"manifest {manifest_uri} names {uri!r}: . and .. are not allowed")
    if manifest.scheme == "s3":
        if target.scheme != "s3" or target.netloc != manifest.netloc:
            raise ForeignReference(
                f"manifest {manifest_uri} names {uri!r}, outside its own bucket "
                f"s3://{manifest.netloc}/"
            )
        return
    folder = os.path.realpath(os.path.dirname(unquote(manifest.path)))
    path = os.path.realpath(unquote(target.path))
    if target.scheme != "file" or os.path.commonpath([folder, path]) != folder:
        raise ForeignReference(
            f"manifest {manifest_uri} names {uri!r}, outside its own folder file://{folder}/"
        )


def check_entry(manifest_uri: str, relative: str) -> None:
    """Refuse a manifest entry with a `.` or `..` segment: it would leave the prefix."""
    if _DOT_SEGMENTS.intersection(relative.split("/")):
        raise ForeignReference(
            f"manifest {manifest_uri} names {relative!r}: . and .. are not allowed"
        )


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
                # Which store and bucket it may name is checked by check_reference.
                if not isinstance(value, str):
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
