"""The one OCI image layout every pulled image goes into: its names, manifests and configs,
read directly; and the lock that keeps its writers apart (two `skopeo copy` writing one
layout's index.json at once lose entries).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from openmaker.files import replace_whole

REF_NAME = "org.opencontainers.image.ref.name"


class Layout:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock_path = folder.parent / f"{folder.name}.lock"

    @contextlib.contextmanager
    def locked(self, exclusive: bool) -> Iterator[None]:
        """Held by writers alone (exclusive), or by any number of readers."""
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def restored_if_stopped(self) -> Iterator[None]:
        """Around a writer that may be killed (under the exclusive lock): then its index.json
        is put back as it was and its temporary blob files removed, so the layout holds no
        half-written entry; the blobs it completed stay, to be pruned or reused."""
        index = self.folder / "index.json"
        before = index.read_bytes() if index.exists() else None
        try:
            yield
        except BaseException:
            if before is not None and (not index.exists() or index.read_bytes() != before):
                replace_whole(index, before)
            for leftover in self.folder.glob("oci-put-blob*"):  # skopeo's blob being written
                leftover.unlink(missing_ok=True)
            raise

    def names(self) -> dict[str, str]:
        """Each image name in the layout → its manifest digest."""
        try:
            index = json.loads((self.folder / "index.json").read_bytes())
        except FileNotFoundError:
            return {}
        return {
            entry["annotations"][REF_NAME]: entry["digest"]
            for entry in index.get("manifests", [])
            if REF_NAME in entry.get("annotations", {})
        }

    def blob_path(self, digest: str) -> Path:
        algorithm, _, hex_digits = digest.partition(":")
        if not hex_digits.isalnum() or not algorithm.isalnum():
            raise ValueError(f"not a digest: {digest!r}")
        return self.folder / "blobs" / algorithm / hex_digits

    def blob_json(self, digest: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.blob_path(digest).read_bytes())
        return data

    def manifest(self, name: str) -> dict[str, Any]:
        return self.blob_json(self.names()[name])

    def config(self, name: str) -> dict[str, Any]:
        return self.blob_json(self.manifest(name)["config"]["digest"])

    def add_blob(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if not path.exists():
            replace_whole(path, data)
        return digest

    def add_manifest(self, name: str, manifest: dict[str, Any]) -> str:
        """Store `manifest` and name it `name` (under the exclusive lock)."""
        data = json.dumps(manifest, separators=(",", ":")).encode()
        digest = self.add_blob(data)
        index_path = self.folder / "index.json"
        index = json.loads(index_path.read_bytes())
        entries = [
            entry
            for entry in index.get("manifests", [])
            if entry.get("annotations", {}).get(REF_NAME) != name
        ]
        kind = manifest.get("mediaType", "application/vnd.oci.image.manifest.v1+json")
        entry = {"mediaType": kind, "digest": digest, "size": len(data)}
        entries.append({**entry, "annotations": {REF_NAME: name}})
        replace_whole(index_path, json.dumps({**index, "manifests": entries}).encode())
        return digest

    def remove_names(self, names: set[str]) -> None:
        """Forget the images `names` (under the exclusive lock); their blobs stay until pruned."""
        index_path = self.folder / "index.json"
        index = json.loads(index_path.read_bytes())
        entries = [
            entry
            for entry in index.get("manifests", [])
            if entry.get("annotations", {}).get(REF_NAME) not in names
        ]
        replace_whole(index_path, json.dumps({**index, "manifests": entries}).encode())

    def reachable(self, digest: str) -> set[str]:
        """The blobs of the manifest (or index) `digest`: itself, its config and layers."""
        found = {digest}
        try:
            document = self.blob_json(digest)
        except (OSError, ValueError):
            return found  # a missing or non-JSON blob holds nothing further
        if "config" in document:
            found.add(document["config"]["digest"])
        found.update(layer["digest"] for layer in document.get("layers", []))
        for entry in document.get("manifests", []):
            found |= self.reachable(entry["digest"])
        return found
