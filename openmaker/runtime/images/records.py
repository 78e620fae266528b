"""What the layout's names do not say about the images in it: the references each was pulled
by, when it was pulled and when a container last used it (for `openmaker images list`). One
small JSON file per layout name; read-modify-write under a lock of their own.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from openmaker.files import replace_whole


@dataclass(frozen=True)
class Record:
    name: str  # the image's name in the layout
    digest: str  # its manifest's digest
    references: tuple[str, ...]  # as users wrote them, first the first
    pulled: float  # seconds since the epoch
    used: float  # when an image was last prepared for a container (0: never)


class Records:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _path(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def get(self, name: str) -> Record | None:
        try:
            data = json.loads(self._path(name).read_bytes())
        except (OSError, ValueError):
            return None
        return Record(**{**data, "references": tuple(data["references"])})

    def note(self, name: str, digest: str, reference: str, used: bool = False) -> None:
        """`reference` names the image `name`; `used`: a container is about to use it."""
        now = time.time()
        with self._locked():
            record = self.get(name) or Record(name, digest, (), now, 0.0)
            if reference not in record.references:
                record = replace(record, references=(*record.references, reference))
            if used:
                record = replace(record, used=now)
            replace_whole(self._path(name), json.dumps(asdict(record)))

    def all(self) -> dict[str, Record]:
        found = (self.get(path.stem) for path in sorted(self.folder.glob("*.json")))
        return {record.name: record for record in found if record is not None}

    def forget(self, name: str) -> None:
        with self._locked():
            self._path(name).unlink(missing_ok=True)
