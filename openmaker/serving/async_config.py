"""An endpoint config's `AsyncInferenceConfig`: what CreateEndpointConfig accepts, and where an
asynchronous invocation's output and failure objects go.

`OutputConfig.S3OutputPath` is required (s3://), `S3FailurePath` optional; the output is
`<S3OutputPath>/<id>.out` (InvokeEndpointAsync's `S3OutputPathExtension` goes between the two,
its `Filename` replaces `<id>.out`), a failure `<S3FailurePath>/<id>-error.out`, `<id>` a fresh UUID
per request, not its InferenceId (SageMaker's answers show names unrelated to the InferenceId,
given or generated). `ClientConfig.MaxConcurrentInvocationsPerInstance` defaults to 1 here
(SageMaker picks its own). `NotificationConfig` is accepted; there is no SNS here: each
notification is written to the endpoint's log group instead (serving/async_runner.py).
"""

from __future__ import annotations

from typing import Any

from openmaker.shapes.errors import ValidationException
from openmaker.store.errors import StoreError
from openmaker.store.location import split_s3_uri

DEFAULT_CONCURRENCY = 1


def check(config: dict[str, Any] | None) -> None:
    if config is None:
        return
    output = config.get("OutputConfig") or {}
    for member, required in (("S3OutputPath", True), ("S3FailurePath", False)):
        uri = output.get(member)
        if uri is None and not required:
            continue
        if not _is_s3(uri or ""):
            raise ValidationException(
                f"AsyncInferenceConfig.OutputConfig.{member}: {uri!r} is not an S3 URI "
                "(s3://bucket/prefix)"
            )


def _is_s3(uri: str) -> bool:
    try:
        bucket, _ = split_s3_uri(uri)
    except StoreError:
        return False
    return bool(bucket)


def concurrency(config: dict[str, Any]) -> int:
    client = config.get("ClientConfig") or {}
    return int(client.get("MaxConcurrentInvocationsPerInstance") or DEFAULT_CONCURRENCY)


def output_location(
    config: dict[str, Any], name: str, extension: str | None = None, filename: str | None = None
) -> str:
    """`<S3OutputPath>[/<S3OutputPathExtension>]/<Filename or name.out>` (InvokeEndpointAsync's
    members, checked by serving/async_invoke.py)."""
    parts = [config["OutputConfig"]["S3OutputPath"].rstrip("/")]
    if extension is not None:
        parts.append(extension.strip("/"))
    parts.append(filename or f"{name}.out")
    return "/".join(parts)


def failure_location(config: dict[str, Any], name: str) -> str | None:
    path = config["OutputConfig"].get("S3FailurePath")
    return None if path is None else f"{path.rstrip('/')}/{name}-error.out"
