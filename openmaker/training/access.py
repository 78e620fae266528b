"""The places a training job's code may reach through its own key to the S3 gate
(openmaker/jobs/gate_keys.py): each channel's S3Uri (read), `<S3OutputPath>/<job>/` and the
checkpoint prefix (read-write)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from openmaker.jobs import gate_keys
from openmaker.jobs.gate_keys import Place
from openmaker.store.location import StoreSettings


def places(request: dict[str, Any]) -> list[Place]:
    found = []
    for channel in request.get("InputDataConfig") or []:
        source = (channel.get("DataSource") or {}).get("S3DataSource") or {}
        if source.get("S3Uri"):
            found.append(Place(source["S3Uri"], is_folder=False, write=False))
    output = (request.get("OutputDataConfig") or {}).get("S3OutputPath")
    if output:
        found.append(Place(f"{output.rstrip('/')}/{request['TrainingJobName']}/", True, True))
    checkpoint = (request.get("CheckpointConfig") or {}).get("S3Uri")
    if checkpoint:
        found.append(Place(checkpoint, is_folder=True, write=True))
    return found


def code_environment(home: Path, request: dict[str, Any], store: StoreSettings) -> dict[str, str]:
    """The code's store variables, with a key of the job's own when a server's gate serves it."""
    return gate_keys.code_environment(home, request["TrainingJobName"], places(request), store)
