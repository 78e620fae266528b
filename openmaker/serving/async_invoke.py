"""InvokeEndpointAsync on the server's side: the request checked and put in the endpoint's queue
(serving/async_queue.py); its InferenceId and where its output or failure will be, answered at
once. The endpoint's worker does the rest (serving/async_runner.py)."""

from __future__ import annotations

import base64
import re
import time
import uuid
from typing import Any

from openmaker.jobs.db import EndpointRecord
from openmaker.serving import async_config, async_queue
from openmaker.serving.endpoints import Endpoints
from openmaker.serving.proxy import InvocationError
from openmaker.store.errors import StoreError
from openmaker.store.location import split_s3_uri

# SageMaker's bounds and defaults.
TTL_SECONDS = (60, 21600, 21600)
TIMEOUT_SECONDS = (1, 3600, 900)
TAKING = ("InService", "Updating", "SystemUpdating")
INPUT_LOCATION = "X-Amzn-SageMaker-InputLocation"
# InvokeEndpointAsync's output members: (header, member, most characters, pattern), as in the
# service's model.
EXTENSION = (
    "X-Amzn-SageMaker-S3OutputPathExtension",
    "s3OutputPathExtension",
    512,
    r"^(?!s3:|https:)[a-zA-Z0-9!_.*'()/-]+$",
)
FILENAME = (
    "X-Amzn-SageMaker-Filename",
    "filename",
    32,
    r"^(?!.*\..*\.)[a-zA-Z0-9][a-zA-Z0-9-_\.]*$",
)
# InferenceId: any text without a leading space, in printable ASCII after its first character
# (the model's `\A\S[\p{Print}]*\z`; Java's \p{Print} is ASCII's).
INFERENCE_ID = (
    "X-Amzn-SageMaker-Inference-Id",
    "inferenceId",
    64,
    r"\A\S[\x20-\x7e]*\Z",
    r"\A\S[\p{Print}]*\z",
)
# The most an inline Body (instead of an InputLocation) may have.
MAX_INLINE_BYTES = 128_000


def accept(
    endpoints: Endpoints, name: str, headers: dict[str, str], body: bytes = b""
) -> dict[str, Any]:
    """Queue the request (its input at InputLocation, or `body` given inline); its InferenceId,
    OutputLocation and FailureLocation."""
    with endpoints.sessions() as session:
        row = session.get(EndpointRecord, name)
        found = None if row is None else (row.status, row.config.get("AsyncInferenceConfig"))
    account = endpoints.settings.account_id
    if found is None:
        raise _invalid(f"Endpoint {name} of account {account} not found.")
    status, config = found
    if config is None:
        raise _invalid(
            f"Endpoint {name} of account {account} is not configured for asynchronous "
            "inference: its endpoint config has no AsyncInferenceConfig."
        )
    if status not in TAKING:
        raise _invalid(
            f"Endpoint {name} of account {account} is in status {status}; it takes "
            "invocations once InService."
        )
    input_location = headers.get(INPUT_LOCATION, "")
    _check_input(input_location, body)
    ttl = _bounded(headers, "X-Amzn-SageMaker-RequestTTLSeconds", "requestTTLSeconds", TTL_SECONDS)
    timeout = _bounded(
        headers,
        "X-Amzn-SageMaker-InvocationTimeoutSeconds",
        "invocationTimeoutSeconds",
        TIMEOUT_SECONDS,
    )
    inference_id = _inference_id(headers)
    # The output and failure objects share a name of their own, whether the InferenceId was
    # given or made here, as SageMaker's do: requests given one InferenceId never overwrite
    # each other's answers.
    object_name = str(uuid.uuid4())
    extension, filename = _member(headers, *EXTENSION), _member(headers, *FILENAME)
    request = async_queue.AsyncRequest(
        inference_id=inference_id,
        input_location=input_location,
        output_location=async_config.output_location(config, object_name, extension, filename),
        failure_location=async_config.failure_location(config, object_name),
        content_type=headers.get("X-Amzn-SageMaker-Content-Type"),
        accept=headers.get("X-Amzn-SageMaker-Accept"),
        custom_attributes=headers.get("X-Amzn-SageMaker-Custom-Attributes"),
        ttl_seconds=ttl,
        timeout_seconds=timeout,
        queued_at=time.time(),
        body=base64.b64encode(body).decode() if body else None,
    )
    async_queue.put(async_queue.folder(endpoints.settings, name), request)
    answer: dict[str, Any] = {
        "InferenceId": request.inference_id,
        "OutputLocation": request.output_location,
    }
    if request.failure_location is not None:
        answer["FailureLocation"] = request.failure_location
    return answer


def _check_input(input_location: str, body: bytes) -> None:
    """Exactly one of InputLocation (an S3 object) and an inline Body (at most 128,000 bytes)."""
    if body and input_location:
        raise _invalid("Body and InputLocation are mutually exclusive: provide exactly one.")
    if body:
        if len(body) > MAX_INLINE_BYTES:
            raise _invalid(
                f"1 validation error detected: Value at 'body' failed to satisfy constraint: "
                f"Member must have length less than or equal to {MAX_INLINE_BYTES}"
            )
        return
    if not input_location:
        raise _invalid("Provide exactly one of Body and InputLocation.")
    try:
        bucket, key = split_s3_uri(input_location)
    except StoreError:
        bucket = key = ""
    if not bucket or not key:
        raise _invalid(
            f"1 validation error detected: Value {input_location[:200]!r} at 'inputLocation' "
            "failed to satisfy constraint: Member must be an S3 URI of an object "
            "(s3://bucket/key)"
        )


def _member(
    headers: dict[str, str], header: str, member: str, most: int, pattern: str
) -> str | None:
    """The header's value, refused as SageMaker refuses it; None when not given."""
    text = headers.get(header)
    if text is None:
        return None
    # `\Z`: `$` would let a trailing line break through.
    _constrained(text, member, most, pattern.removesuffix("$") + r"\Z", pattern)
    if any(part in ("", ".", "..") for part in text.strip("/").split("/")):
        # Allowed by the pattern, but the embedded store keeps keys as paths: it would resolve
        # such a key to another object than the one named.
        raise _invalid(
            f"1 validation error detected: Value {text[:40]!r} at '{member}' failed to satisfy "
            "constraint: Member must not have an empty, '.' or '..' path segment"
        )
    return text


def _inference_id(headers: dict[str, str]) -> str:
    """The caller's InferenceId, refused as SageMaker refuses it; else a fresh one."""
    text = headers.get(INFERENCE_ID[0])
    return str(uuid.uuid4()) if text is None else checked_inference_id(text)


def checked_inference_id(text: str) -> str:
    """An InferenceId given by the caller (of any invocation), refused unless the model's
    constraints hold. `text`: the header's value, its bytes read one to one (latin-1)."""
    _, member, most, pattern, shown = INFERENCE_ID
    _constrained(_as_sent(text), member, most, pattern, shown)
    return text


def _as_sent(text: str) -> str:
    """A header's value as the client wrote it: botocore sends non-ASCII text as UTF-8."""
    try:
        return text.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:  # not read from bytes: already text
        return text


def _constrained(text: str, member: str, most: int, pattern: str, shown: str) -> None:
    """Refuse `text` as SageMaker refuses a member (`member`) longer than `most` or not matching
    `pattern` (the model's spelling of it: `shown`)."""
    if not 1 <= len(text) <= most:
        raise _invalid(
            f"1 validation error detected: Value {text[:40]!r} at '{member}' failed to satisfy "
            f"constraint: Member must have length between 1 and {most}"
        )
    if re.match(pattern, text) is None:
        raise _invalid(
            f"1 validation error detected: Value {text[:40]!r} at '{member}' failed to satisfy "
            f"constraint: Member must satisfy regular expression pattern: {shown}"
        )


def _bounded(
    headers: dict[str, str], header: str, member: str, bounds: tuple[int, int, int]
) -> int:
    low, high, default = bounds
    text = headers.get(header)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise _invalid(
            f"1 validation error detected: Value {text[:20]!r} at '{member}' failed to satisfy "
            f"constraint: Member must have value between {low} and {high}"
        )
    return value


def _invalid(message: str) -> InvocationError:
    return InvocationError("ValidationError", 400, message)
