"""Packing `/opt/ml/model` and `/opt/ml/output/data` and writing them back (CONTRACT.md §3).

Archives are built in the job's folder first and uploaded in one atomic put, so no partial
object is ever visible under the final key. In a multi-host job the folders of all hosts are
merged into one archive.
"""

from __future__ import annotations

import asyncio
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openmaker.config import Settings
from openmaker.host.events import Emit
from openmaker.host.files import regular_files
from openmaker.host.progress import ProgressMeter
from openmaker.store import Location, resolve, upload_file


@dataclass(frozen=True)
class Artifacts:
    model_uri: str
    output_uri: str


def output_uri(request: dict[str, Any], name: str) -> str:
    """`<S3OutputPath>/<TrainingJobName>/output/<name>`."""
    base = request["OutputDataConfig"]["S3OutputPath"].rstrip("/")
    return f"{base}/{request['TrainingJobName']}/output/{name}"


def model_uri(request: dict[str, Any]) -> str:
    """ModelArtifacts.S3ModelArtifacts: the archive, or the folder when uncompressed."""
    if request["OutputDataConfig"].get("CompressionType") == "NONE":
        return output_uri(request, "model/")
    return output_uri(request, "model.tar.gz")


def output_prefix(request: dict[str, Any], settings: Settings, env: dict[str, str]) -> Location:
    return resolve(output_uri(request, ""), settings, env)


def pack(folders: Sequence[Path], archive: Path) -> None:
    """A gzip tar of the folders' contents, member names relative to each folder."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "w:gz", compresslevel=6) as tar:
            for folder in folders:
                for child in sorted(folder.iterdir()) if folder.is_dir() else []:
                    tar.add(child, arcname=child.name)
    except BaseException:
        # A half archive (a full disk, a stop) must never be taken for a whole one.
        archive.unlink(missing_ok=True)
        raise


def upload_artifacts(
    request: dict[str, Any],
    model_dirs: Sequence[Path],
    output_dirs: Sequence[Path],
    staging: Path,
    settings: Settings,
    env: dict[str, str],
    emit: Emit,
) -> Artifacts:
    destination = output_prefix(request, settings, env)
    compressed = request["OutputDataConfig"].get("CompressionType", "GZIP") != "NONE"
    uploads: list[tuple[Path, Location]] = []
    if compressed:
        pack(model_dirs, staging / "model.tar.gz")
        uploads.append((staging / "model.tar.gz", destination.child("model.tar.gz")))
    else:
        model = destination.child("model")
        for folder in model_dirs:
            uploads += [(f, model.child(name)) for name, f in regular_files(folder).items()]
    pack(output_dirs, staging / "output.tar.gz")
    uploads.append((staging / "output.tar.gz", destination.child("output.tar.gz")))

    meter = ProgressMeter("Uploading", sum(p.stat().st_size for p, _ in uploads), emit)

    async def upload_all() -> None:
        await asyncio.gather(*(upload_file(path, target, meter.add) for path, target in uploads))

    asyncio.run(upload_all())
    meter.finish()
    return Artifacts(model_uri(request), output_uri(request, "output.tar.gz"))
