"""Data capture: sampled invocations written to S3 as SageMaker writes them.

An endpoint config's `DataCaptureConfig` names the destination; each captured invocation is a
JSON line (`captureData.endpointInput` / `endpointOutput` with `observedContentType`, `mode`,
`data`, `encoding`; `eventMetadata` with `eventId`, `inferenceId`, `inferenceTime`;
`eventVersion`) in an object under
`<DestinationS3Uri>/<endpoint>/<variant>/yyyy/mm/dd/hh/<mm>-<ss>-<ms>-<uuid>.jsonl`. Lines are
gathered for up to FLUSH_SECONDS and written together; what is gathered when the server stops is
written as it stops.
"""

from __future__ import annotations

import atexit
import base64
import json
import queue
import random
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeGuard

import obstore
from sqlalchemy.orm import Session, sessionmaker

from openmaker.jobs.db import EndpointRecord
from openmaker.settings import StoreSettings
from openmaker.shapes.errors import ValidationException
from openmaker.store.errors import StoreError
from openmaker.store.location import resolve, split_s3_uri

# How long captured lines wait to be written with others.
FLUSH_SECONDS = 1.0
# How long an endpoint's capture settings are taken as known.
CONFIG_SECONDS = 1.0
INFERENCE_ID = "X-Amzn-SageMaker-Inference-Id"


def check(config: dict[str, Any] | None) -> None:
    """Refuse a DataCaptureConfig openmaker cannot honour (CreateEndpointConfig)."""
    if config is None:
        return
    uri = config.get("DestinationS3Uri") or ""
    try:
        bucket, _ = split_s3_uri(uri)
    except StoreError:
        bucket = ""
    if not bucket:
        raise ValidationException(
            f"DataCaptureConfig.DestinationS3Uri: {uri!r} is not an S3 URI (s3://bucket/prefix)"
        )
    if not config.get("CaptureOptions"):
        raise ValidationException(
            "DataCaptureConfig.CaptureOptions: name at least one of Input, Output"
        )


@dataclass(frozen=True)
class _Line:
    destination: str
    endpoint: str
    variant: str
    at: datetime
    text: str


class Capture:
    def __init__(self, sessions: sessionmaker[Session], store: StoreSettings) -> None:
        self.sessions, self.store = sessions, store
        self._configs: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._lines: queue.Queue[_Line | None] = queue.Queue()
        self._writer: threading.Thread | None = None
        self._lock = threading.Lock()

    def record(
        self,
        endpoint: str,
        variant: str,
        body: bytes,
        headers: dict[str, str],
        answer: bytes,
        answer_type: str,
    ) -> None:
        config = self._config(endpoint)
        if not _captures(config):
            return
        if random.random() * 100 >= float(config.get("InitialSamplingPercentage", 0)):
            return
        modes = {o.get("CaptureMode") for o in config.get("CaptureOptions") or []}
        kinds = config.get("CaptureContentTypeHeader") or {}
        data: dict[str, Any] = {}
        if modes & {"Input", "InputAndOutput"}:
            content_type = headers.get("Content-Type", "application/octet-stream")
            data["endpointInput"] = _captured(body, content_type, "INPUT", kinds)
        if modes & {"Output", "InputAndOutput"}:
            data["endpointOutput"] = _captured(answer, answer_type, "OUTPUT", kinds)
        at = datetime.now(UTC)
        metadata = {"eventId": str(uuid.uuid4()), "inferenceTime": _iso(at)}
        if INFERENCE_ID in headers:
            metadata["inferenceId"] = headers[INFERENCE_ID]
        line = {"captureData": data, "eventMetadata": metadata, "eventVersion": "0"}
        text = json.dumps(line, separators=(",", ":"))
        self._start()
        self._lines.put(_Line(config["DestinationS3Uri"], endpoint, variant, at, text))

    def enabled(self, endpoint: str) -> bool:
        """Whether the endpoint captures data now, read afresh (the native lane leaves the
        endpoints that do to the Python path: api/lane.py)."""
        return _captures(self._read(endpoint))

    def known(self, endpoint: str) -> bool:
        """Whether the endpoint's capture settings were read lately (record reads no
        database then)."""
        known = self._configs.get(endpoint)
        return known is not None and time.monotonic() - known[0] < CONFIG_SECONDS

    def _config(self, endpoint: str) -> dict[str, Any] | None:
        now = time.monotonic()
        known = self._configs.get(endpoint)
        if known is not None and now - known[0] < CONFIG_SECONDS:
            return known[1]
        config = self._configs[endpoint] = (now, self._read(endpoint))
        return config[1]

    def _read(self, endpoint: str) -> dict[str, Any] | None:
        """The endpoint's DataCaptureConfig, from the database."""
        with self.sessions() as session:
            row = session.get(EndpointRecord, endpoint)
            return None if row is None else row.config.get("DataCaptureConfig")

    def _start(self) -> None:
        with self._lock:
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, daemon=True)
                self._writer.start()
                atexit.register(self.close)

    def close(self) -> None:
        """Write what is gathered, and stop the writer."""
        if self._writer is not None:
            self._lines.put(None)
            self._writer.join(timeout=30)

    def _write_loop(self) -> None:
        ended = False
        while not ended:
            first = self._lines.get()
            batch: list[_Line] = []
            if first is None:
                ended = True
            else:
                batch.append(first)
                deadline = time.monotonic() + FLUSH_SECONDS
                while (left := deadline - time.monotonic()) > 0:
                    try:
                        line = self._lines.get(timeout=left)
                    except queue.Empty:
                        break
                    if line is None:
                        ended = True
                        break
                    batch.append(line)
            self._write(batch)

    def _write(self, batch: list[_Line]) -> None:
        groups: dict[tuple[str, str, str, str], list[_Line]] = {}
        for line in batch:
            hour = line.at.strftime("%Y/%m/%d/%H")
            groups.setdefault((line.destination, line.endpoint, line.variant, hour), []).append(
                line
            )
        for (destination, endpoint, variant, hour), lines in groups.items():
            at = lines[0].at
            name = f"{at:%M-%S}-{at.microsecond // 1000:03d}-{uuid.uuid4()}.jsonl"
            uri = f"{destination.rstrip('/')}/{endpoint}/{variant}/{hour}/{name}"
            body = "".join(line.text + "\n" for line in lines).encode()
            try:
                location = resolve(uri, self.store)
                obstore.put(location.store, location.key, body)
            except Exception as exc:  # the invocations were answered; the capture is lost
                print(f"openmaker: data capture to {uri} failed: {exc}", file=sys.stderr)


def _captured(data: bytes, content_type: str, mode: str, kinds: dict[str, Any]) -> dict[str, str]:
    bare = content_type.split(";", 1)[0].strip().lower()
    encoding = "BASE64"
    if bare in {t.lower() for t in kinds.get("CsvContentTypes") or []}:
        encoding = "CSV"
    elif bare in {t.lower() for t in kinds.get("JsonContentTypes") or []}:
        encoding = "JSON"
    text = None
    if encoding != "BASE64":
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            encoding = "BASE64"
    if text is None:
        text = base64.b64encode(data).decode()
    return {"observedContentType": content_type, "mode": mode, "data": text, "encoding": encoding}


def _iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def _captures(config: dict[str, Any] | None) -> TypeGuard[dict[str, Any]]:
    """Whether a DataCaptureConfig captures anything."""
    return config is not None and bool(config.get("EnableCapture", True))
