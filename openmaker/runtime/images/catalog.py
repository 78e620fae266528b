"""The images of an ImageStore as `openmaker images` shows and tidies them: each with its
references, digest, size (and what of it other images share), when it was pulled and last
used; `remove` forgets an image, `prune` deletes the blobs and unpacked roots no image holds.
Prune works under the layout's exclusive lock (no pull or unpack runs meanwhile) and leaves a
root whose use lock a process holds (a container may be running on it: store.py).
"""

from __future__ import annotations

import fcntl
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from openmaker.runtime.images.reference import ImageReference
from openmaker.runtime.images.store import ImageStore, use_lock

# Names of the layout that are twins of another image (zstd.py), not images of their own.
_TWIN = "-plain"


@dataclass(frozen=True)
class Listed:
    name: str
    digest: str
    references: tuple[str, ...]
    size: int  # bytes of its blobs in the layout
    shared: int  # of which other images have too
    pulled: float | None
    used: float | None


@dataclass
class Pruned:
    blobs: int = 0
    bytes: int = 0
    roots: list[str] = field(default_factory=list)
    in_use: list[str] = field(default_factory=list)


def list_images(store: ImageStore) -> list[Listed]:
    with store.layout.locked(exclusive=False):
        names = {n: d for n, d in store.layout.names().items() if not n.endswith(_TWIN)}
        blobs = {name: store.layout.reachable(digest) for name, digest in names.items()}
        sizes = {
            digest: _size(store.layout.blob_path(digest)) for b in blobs.values() for digest in b
        }
    records = store.records.all()
    listed = []
    for name, digest in names.items():
        others = set().union(*(b for other, b in blobs.items() if other != name))
        record = records.get(name)
        listed.append(
            Listed(
                name, digest, record.references if record else (),
                sum(sizes[d] for d in blobs[name]), sum(sizes[d] for d in blobs[name] & others),
                record.pulled if record else None, record.used or None if record else None,
            )
        )  # fmt: skip
    return sorted(listed, key=lambda image: image.pulled or 0.0, reverse=True)


def find(store: ImageStore, reference: ImageReference | None, text: str) -> list[Listed]:
    """The images `text` names: a reference they were pulled by (as given or parsed), or
    (a prefix of) their digest."""
    wanted = {text, str(reference)} if reference is not None else {text}
    digest = text if text.startswith("sha256:") else f"sha256:{text}"
    return [
        image
        for image in list_images(store)
        if wanted & set(image.references)
        or (len(digest) > 7 + 6 and image.digest.startswith(digest))
        or (reference is not None and reference.digest == image.digest)
    ]


def remove(store: ImageStore, images: list[Listed]) -> Pruned:
    """Forget `images` and delete what no other image holds (what prune deletes)."""
    names = {image.name for image in images}
    with store.layout.locked(exclusive=True):
        store.layout.remove_names(names | {name + _TWIN for name in names})
    for name in names:
        store.records.forget(name)
    return prune(store)


def prune(store: ImageStore) -> Pruned:
    pruned = Pruned()
    with store.layout.locked(exclusive=True):
        names = store.layout.names()
        keep: set[str] = set()
        for digest in names.values():
            keep |= store.layout.reachable(digest)
        roots = {digest.replace(":", "-") for digest in names.values()}
        for blob in sorted((store.layout.folder / "blobs" / "sha256").glob("*")):
            if f"sha256:{blob.name}" not in keep and not blob.name.startswith("."):
                pruned.blobs += 1
                pruned.bytes += _size(blob)
                blob.unlink()
        if store.unpacked.is_dir():
            for bundle in sorted(store.unpacked.iterdir()):
                if bundle.is_dir() and not bundle.name.startswith(".") and bundle.name not in roots:
                    _remove_root(store, bundle, pruned)
    known = set(names)
    for name in store.records.all():
        if name not in known:
            store.records.forget(name)
    return pruned


def _remove_root(store: ImageStore, bundle: Path, pruned: Pruned) -> None:
    digest = bundle.name.replace("-", ":", 1)
    lock_path = use_lock(store.unpacked, digest)
    with open(lock_path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pruned.in_use.append(digest)
            return
        shutil.rmtree(bundle)
        bundle.with_name(bundle.name + ".lock").unlink(missing_ok=True)
        lock_path.unlink()
    pruned.roots.append(digest)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
