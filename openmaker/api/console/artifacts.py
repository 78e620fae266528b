"""A job's artifacts as downloads: the model archive and the output archive its description
names, read from the store the job wrote them to. Only those two objects of an ended job can
be had this way; the request names a kind, never a key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import obstore
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse

from openmaker.shapes.errors import ResourceNotFound, ValidationException
from openmaker.store import resolve
from openmaker.training.service import TrainingJobs

KINDS = ("model", "output")
CHUNK_SIZE = 1024 * 1024
ENDED = ("Completed", "Failed", "Stopped")


async def download(jobs: TrainingJobs, name: str, kind: str) -> Response:
    if kind not in KINDS:
        raise ValidationException(f"kind must be one of {list(KINDS)}")
    described = await run_in_threadpool(jobs.describe, name)
    uri = archive_uri(described, kind)
    if uri is None:
        raise ResourceNotFound(f"training job {name} has no {kind} archive (yet)")
    location = resolve(uri, jobs.settings.store)
    try:
        result = await obstore.get_async(location.store, location.key)
    except FileNotFoundError:
        raise ResourceNotFound(f"{uri} is not in the store (removed since?)") from None

    async def chunks() -> AsyncIterator[bytes]:
        async for chunk in result.stream(min_chunk_size=CHUNK_SIZE):
            yield bytes(chunk)

    return StreamingResponse(
        chunks(),
        media_type="application/gzip",
        headers={
            "Content-Length": str(result.meta["size"]),
            # Job names are letters, digits and hyphens: nothing to quote.
            "Content-Disposition": f'attachment; filename="{name}-{kind}.tar.gz"',
        },
    )


def archive_uri(described: dict[str, Any], kind: str) -> str | None:
    """The archive's URI as the job's description gives it; None before the job ended."""
    if described["TrainingJobStatus"] not in ENDED:
        return None
    if kind == "model":
        uri = described.get("ModelArtifacts", {}).get("S3ModelArtifacts", "")
        return str(uri) if uri.endswith(".tar.gz") else None
    base = str(described["OutputDataConfig"]["S3OutputPath"]).rstrip("/")
    return f"{base}/{described['TrainingJobName']}/output/output.tar.gz"
