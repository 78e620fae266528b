"""Image references as users write them, parsed into what skopeo is told to copy.

Registry references follow Docker's grammar: `[registry[:port]/]path[:tag][@digest]`, where
the first part names a registry only when it looks like a host (a dot, a port, or
`localhost`); otherwise the image is on Docker Hub, and a single-part name is one of its
official images (`python` → `docker.io/library/python:latest`). Files and folders are named
with skopeo's transports: `oci-archive:PATH[:NAME]`, `docker-archive:PATH[:NAME]`,
`oci:PATH[:NAME]`, or an absolute path (an OCI layout folder).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DOCKER_HUB = "docker.io"
DEFAULT_TAG = "latest"
# Docker's own limit on a repository's full name.
NAME_LIMIT = 255

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_HOST_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_REGISTRY = re.compile(rf"(?:{_HOST_PART}(?:\.{_HOST_PART})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})")
FILE_TRANSPORTS = ("oci-archive", "docker-archive", "oci")


class ReferenceError(ValueError):
    """A reference that names no image; the message says what is wrong, for a person."""


@dataclass(frozen=True)
class ImageReference:
    # "docker" (a registry), or one of FILE_TRANSPORTS.
    transport: str
    # A registry's image: where, which repository, and which tag and/or digest.
    registry: str = ""
    repository: str = ""
    tag: str | None = None
    digest: str | None = None
    # A file or folder (absolute or as given), and the image's name in it (optional).
    path: str = ""
    name: str | None = None

    @property
    def is_registry(self) -> bool:
        return self.transport == "docker"

    def skopeo_name(self) -> str:
        """The reference in skopeo's transport syntax."""
        if self.is_registry:
            return f"docker://{self}"
        return f"{self.transport}:{self.path}" + (f":{self.name}" if self.name else "")

    def pinned(self, digest: str) -> ImageReference:
        """This registry image at `digest` (its tag kept for display only)."""
        return ImageReference("docker", self.registry, self.repository, self.tag, digest)

    def by_digest(self) -> str:
        """skopeo's name of this registry image by its digest alone."""
        assert self.digest is not None
        return f"docker://{self.registry}/{self.repository}@{self.digest}"

    def __str__(self) -> str:
        if not self.is_registry:
            return self.skopeo_name()
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str) -> ImageReference:
    """The image `text` names; a ReferenceError says why it names none."""
    if not text or text != text.strip() or any(ord(c) < 32 for c in text):
        raise ReferenceError(f"{text!r} is not an image reference")
    transport, colon, rest = text.partition(":")
    if colon and transport in FILE_TRANSPORTS:
        return _file_reference(transport, rest, text)
    if text.startswith("/"):
        return _file_reference("oci", text, text)
    return _registry_reference(text.removeprefix("docker://"))


def _file_reference(transport: str, rest: str, text: str) -> ImageReference:
    path, _, name = rest.partition(":")
    if not path:
        raise ReferenceError(f"{text!r} names no file: write {transport}:PATH[:NAME]")
    if name and not re.fullmatch(r"[A-Za-z0-9._/@:-]+", name):
        raise ReferenceError(f"{text!r}: {name!r} is not an image name within the file")
    return ImageReference(transport, path=path, name=name or None)


def _registry_reference(text: str) -> ImageReference:
    remainder, at, digest = text.partition("@")
    if at and not _DIGEST.fullmatch(digest):
        raise ReferenceError(
            f"{text!r}: {digest!r} is not a digest (sha256: and 64 lowercase hex digits)"
        )
    # A tag follows the last colon after the last slash (a colon before it is a port).
    slash = remainder.rfind("/")
    name, colon, tag = (
        remainder.rpartition(":") if ":" in remainder[slash + 1 :] else (remainder, "", "")
    )
    if colon and not _TAG.fullmatch(tag):
        raise ReferenceError(f"{text!r}: {tag!r} is not a tag (letters, digits, _ . -)")
    first, slash_found, path = name.partition("/")
    if slash_found and (any(c in first for c in ".:") or first == "localhost"):
        registry = first
        if not _REGISTRY.fullmatch(registry):
            raise ReferenceError(f"{text!r}: {registry!r} is not a registry host[:port]")
    else:
        registry, path = DOCKER_HUB, name
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if not _PATH.fullmatch(path):
        raise ReferenceError(
            f"{text!r}: {path!r} is not a repository name (lowercase letters, digits, and "
            "separators . _ - between them, parts joined by /)"
        )
    if len(f"{registry}/{path}") > NAME_LIMIT:
        raise ReferenceError(f"{text!r}: the repository name is over {NAME_LIMIT} characters")
    if not tag and not at:
        tag = DEFAULT_TAG
    return ImageReference("docker", registry, path, tag or None, digest or None)
