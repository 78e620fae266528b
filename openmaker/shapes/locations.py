"""Where a CreateTrainingJob request points: object store URIs and folders of this machine.

Two rules the model cannot state. An S3 URI has no `.` or `..` segment: no object key needs
one, and in the embedded store (a folder) they would climb out of the bucket. A local path (a
file:// URI, a local image folder, a local source archive) is read or written by openmaker as
root, so it is the machine owner's privilege: the owner's own process may name any folder, a
request through the API only one under the folders the owner listed, and never openmaker's home.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from botocore.model import ListShape, MapShape, Shape, StructureShape

from openmaker.shapes.model import operation_model
from openmaker.shapes.validate import failure

# The hyperparameter naming the source archive of script mode (the sagemaker SDK's name).
SUBMIT_DIRECTORY = "sagemaker_submit_directory"
_DOT_SEGMENTS = frozenset({".", ".."})


@dataclass(frozen=True)
class LocalPaths:
    """Which local paths a request may name: any (`roots` None), or only under `roots` and
    never in `home`. Paths are compared as real paths (links and `..` resolved)."""

    roots: tuple[Path, ...] | None = None
    home: Path | None = None

    @classmethod
    def anywhere(cls) -> LocalPaths:
        """The machine owner running jobs in their own process."""
        return cls()

    @classmethod
    def under(cls, roots: tuple[Path, ...], home: Path) -> LocalPaths:
        """A request through the API: only under the owner's `roots`, never in `home`."""
        return cls(tuple(_real(root) for root in roots), _real(home))

    def refusal(self, path: Path) -> str | None:
        """Why `path` may not be named, as a constraint; None when it may."""
        if self.roots is None:
            return None
        if not path.is_absolute():  # relative to a worker's folder, which a client cannot know
            return "Member must name an absolute path"
        real = _real(path)
        if self.home is not None and _within(real, self.home):
            return "Member must not name a path in openmaker's home folder"
        if not any(_within(real, root) for root in self.roots):
            return (
                "Member must not name a local path through the API, except under the folders "
                "the machine's owner lists in OPENMAKER_FILE_ROOTS"
            )
        return None


# skopeo's transports for images in local files (runtime/images/reference.py).
IMAGE_FILE_TRANSPORTS = ("oci-archive", "docker-archive", "oci")
# Where each operation's request names its image.
_IMAGE_MEMBERS = {
    "CreateTrainingJob": ("AlgorithmSpecification", "TrainingImage"),
    "CreateProcessingJob": ("AppSpecification", "ImageUri"),
}


def location_problems(
    request: Mapping[str, Any], local: LocalPaths, operation: str = "CreateTrainingJob"
) -> Iterator[str]:
    """Every location member of a request of `operation` that breaks the rules above."""
    shape = operation_model(operation).input_shape
    assert shape is not None  # the model describes the request
    for path, uri in _s3_uri_members(shape, request, ""):
        yield from _uri_problems(uri, path, local)
    holder, member = _IMAGE_MEMBERS[operation]
    image = (request.get(holder) or {}).get(member)
    if isinstance(image, str):
        folder = image_path(image)
        if folder is not None:
            yield from _local_problems(image, folder, f"{holder}.{member}", local)
    source = submit_directory(request.get("HyperParameters") or {})
    if source is not None and not source.startswith("/opt/ml/"):  # already in the container
        at = f"HyperParameters.{SUBMIT_DIRECTORY}"
        archive = _local_path(source, relative=True)
        if archive is None:
            yield from _uri_problems(source, at, local)
        else:
            yield from _local_problems(source, archive, at, local)


def dot_segment(uri: str) -> bool:
    """Whether an s3:// URI has a `.` or `..` bucket or key segment."""
    parsed = urlparse(uri)
    return bool(_DOT_SEGMENTS.intersection([parsed.netloc, *parsed.path.split("/")]))


def _uri_problems(uri: str, at: str, local: LocalPaths) -> Iterator[str]:
    try:
        urlparse(uri)
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket in the host
        yield failure(uri, at, f"Member must be a valid URI ({exc})")
        return
    path = _local_path(uri, relative=False)
    if path is not None:
        yield from _local_problems(uri, path, at, local)
    elif dot_segment(uri):
        yield failure(uri, at, "Member must not have a . or .. segment")


def _local_problems(value: str, path: Path, at: str, local: LocalPaths) -> Iterator[str]:
    reason = local.refusal(path)
    if reason is not None:
        yield failure(value, at, reason)


def image_path(value: str) -> Path | None:
    """The local file or folder an image reference names (an image file, an OCI layout, a
    bring-your-own folder), or None (a registry image)."""
    for transport in IMAGE_FILE_TRANSPORTS:
        if value.startswith(f"{transport}:"):
            return Path(value.removeprefix(f"{transport}:").partition(":")[0])
    return _local_path(value, relative=False)


def _local_path(value: str, relative: bool) -> Path | None:
    """The local path a location names (as openmaker's store and images read it), or None."""
    parsed = urlparse(value)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and (value.startswith("/") or (relative and value)):
        return Path(value)
    return None


def submit_directory(hyperparameters: Mapping[str, Any]) -> str | None:
    """The script-mode source tarball a request names (the SDK quotes it as JSON), if any."""
    raw = hyperparameters.get(SUBMIT_DIRECTORY)
    if not isinstance(raw, str):
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw  # the toolkit takes unquoted values too
    return str(value)


def _s3_uri_members(shape: Shape, value: Any, path: str) -> Iterator[tuple[str, str]]:
    """(member path, value) of every member of the S3Uri shape, named as validation names them."""
    if isinstance(shape, StructureShape) and isinstance(value, Mapping):
        prefix = f"{path}." if path else ""
        for name, member in shape.members.items():
            item = value.get(name)
            if item is None:
                continue
            if member.name == "S3Uri" and isinstance(item, str):
                yield prefix + name, item
            else:
                yield from _s3_uri_members(member, item, prefix + name)
    elif isinstance(shape, ListShape) and isinstance(value, list):
        for index, item in enumerate(value, 1):
            yield from _s3_uri_members(shape.member, item, f"{path}.{index}.member")
    elif isinstance(shape, MapShape) and isinstance(value, Mapping):
        for key, item in value.items():
            yield from _s3_uri_members(shape.value, item, f"{path}.{key}")


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents
