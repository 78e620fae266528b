"""A transform job's data capture (CreateTransformJob's `DataCaptureConfig`), as SageMaker's
"Capture data from batch transform job" page describes it.

Under `DestinationS3Uri` go two folders, `input/` and `output/`. Rather than copies of the data,
each holds a manifest naming the objects: the input objects transformed, and the outputs
written for them, in the manifest format a transform job takes as input
(`[{"prefix": "s3://…/"}, "relative/key", …]`), under the UTC hour the job started
(`yyyy/mm/dd/hh/`), where Model Monitor looks for a period's data. The manifest's own name,
`<job>.jsonl`, is openmaker's (the page names none). Objects whose transform failed are in
neither. `KmsKeyId` is taken and not used (no KMS here); `GenerateInferenceId` is taken and has
no effect: the page says an inference id and time are appended to the output, not how.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import obstore

from openmaker.settings import StoreSettings
from openmaker.store.location import resolve
from openmaker.transform.objects import InputObject


class CaptureError(Exception):
    """The capture could not be written; the message says why."""


def write(
    config: dict[str, Any],
    job: str,
    started: datetime,
    transformed: Sequence[InputObject],
    output_path: str,
    store: StoreSettings,
) -> None:
    """The input and output manifests of the objects `transformed` (their outputs written)."""
    if not transformed:
        return
    first = transformed[0]
    input_prefix = first.location.uri[: len(first.location.uri) - len(first.relative)]
    relatives = sorted(o.relative for o in transformed)
    hour = started.strftime("%Y/%m/%d/%H")
    destination = str(config["DestinationS3Uri"]).rstrip("/")
    for folder, prefix, keys in (
        ("input", input_prefix, relatives),
        ("output", f"{output_path.rstrip('/')}/", [f"{r}.out" for r in relatives]),
    ):
        manifest: list[Any] = [{"prefix": prefix}, *keys]
        uri = f"{destination}/{folder}/{hour}/{job}.jsonl"
        body = (json.dumps(manifest) + "\n").encode()
        try:
            location = resolve(uri, store)
            obstore.put(location.store, location.key, body)
        except Exception as exc:  # the store's errors, for a person
            raise CaptureError(f"The data capture to {uri} could not be written: {exc}") from None
