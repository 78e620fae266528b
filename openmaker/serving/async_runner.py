"""The asynchronous invocations of one endpoint, run by its worker.

Requests are taken from the endpoint's queue (serving/async_queue.py) oldest first, each by an
instance whose container runs and that has fewer than `MaxConcurrentInvocationsPerInstance`
requests in hand. A request older than its RequestTTLSeconds fails, taken or not (an endpoint
with no instance included). For each taken: the input object is read from S3 (missing, or over
MAX_INPUT_BYTES: a failure); the container's 2xx answer (at most MAX_OUTPUT_BYTES, within
InvocationTimeoutSeconds) is written to the output location; its error answer is written to
the failure location as it is, as SageMaker writes it, and any other failure as a sentence
saying why. With a NotificationConfig, the notification SageMaker would publish to SNS (a
success with a SuccessTopic, a failure with an ErrorTopic) is written to the endpoint's log
group, stream NOTIFICATIONS. Each request's outcome and the queue's state go to the endpoint's
metrics (serving/async_metrics.py).
"""

from __future__ import annotations

import base64
import http.client
import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import obstore
from sqlalchemy.orm import Session, sessionmaker

from openmaker.serving import async_config, async_metrics, async_queue
from openmaker.serving.async_metrics import Handled
from openmaker.serving.async_queue import AsyncRequest
from openmaker.serving.instance import Instance
from openmaker.serving.liveness import InstanceConnection
from openmaker.serving.logs import EndpointLogs
from openmaker.serving.metrics import InvocationMetrics
from openmaker.settings import Settings
from openmaker.store.location import resolve

# SageMaker's: an asynchronous request's payload is at most 1 GB.
MAX_INPUT_BYTES = 1024**3
MAX_OUTPUT_BYTES = 1024**3
# How often the queue is looked at for new requests.
POLL_SECONDS = 0.2
NOTIFICATIONS = "AsyncNotifications"
READ_BYTES = 1024 * 1024
# The most a request may take (SageMaker's bound on InvocationTimeoutSeconds), and a margin for
# reading its input and writing its output around the container's answer.
TIMEOUT_SECONDS = 3600
TRANSFER_SECONDS = 60


class Refused(Exception):
    """The request failed; the message says why (the failure object's text)."""


@dataclass(frozen=True)
class Outcome:
    ok: bool
    content_type: str
    message: str = ""  # why it failed: the failure object, else the notification's reason
    # The container answered with an error: its answer is the failure object, as SageMaker's
    # is, and `message` only the notification's failureReason.
    answered: bool = False


class AsyncRunner:
    def __init__(
        self,
        settings: Settings,
        endpoint: str,
        config: dict[str, Any],
        instances: Callable[[], list[Instance]],
        logs: EndpointLogs,
        writers: sessionmaker[Session],
        variant: str = "",
    ) -> None:
        self.settings, self.endpoint, self.config = settings, endpoint, config
        # The variant a request that expires before any instance takes it is counted under.
        self.variant = variant
        self.instances, self.logs = instances, logs
        self.metrics = InvocationMetrics(writers)
        self.backlog = async_metrics.BacklogSampler(self.metrics, endpoint)
        self.queue = async_queue.folder(settings, endpoint)
        self.limit = async_config.concurrency(config)
        self._busy: dict[str, int] = {}
        # Each instance's requests in hand: when each must end (time.monotonic()).
        self._held: dict[str, dict[Path, float]] = {}
        self._taken: set[Path] = set()
        # When each request waiting expires (time.time()): read once from its file.
        self._expiries: dict[Path, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self.queue.mkdir(parents=True, exist_ok=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.metrics.close()

    def _loop(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            waiting = async_queue.waiting(self.queue)
            capacity = sum(1 for i in self.instances() if _takes(i))
            self.backlog.sample(waiting, capacity, time.time(), time.monotonic())
            waiting = self._expire_overdue(waiting, time.time())
            for entry in waiting:
                with self._lock:
                    if entry in self._taken:
                        continue
                    instance = self._free()
                    if instance is None:
                        break  # the oldest waiting requests go first
                    self._taken.add(entry)
                    self._busy[instance.plan.id] = self._busy.get(instance.plan.id, 0) + 1
                    self._held.setdefault(instance.plan.id, {})[entry] = _deadline(entry)
                worker = threading.Thread(target=self._run, args=(entry, instance), daemon=True)
                worker.start()

    def _expire_overdue(self, waiting: list[Path], now: float) -> list[Path]:
        """Fail the requests not taken whose RequestTTLSeconds has passed, whether or not an
        instance could take them (an endpoint scaled to zero included); the others."""
        for gone in set(self._expiries) - set(waiting):
            del self._expiries[gone]
        left = []
        for entry in waiting:
            with self._lock:
                if entry in self._taken:
                    left.append(entry)
                    continue
            expires = self._expiries.get(entry)
            if expires is None:
                try:
                    request = async_queue.read(entry)
                except (OSError, ValueError, TypeError):
                    left.append(entry)  # being written, or taken meanwhile
                    continue
                expires = self._expiries[entry] = request.queued_at + request.ttl_seconds
            if now <= expires:
                left.append(entry)
                continue
            with self._lock:
                self._taken.add(entry)
            self._expire(entry)
        return left

    def _expire(self, entry: Path) -> None:
        try:
            request = async_queue.read(entry)
            received = datetime.now(UTC)
            handled = Handled(self.variant, request.queued_at, time.time(), expired=True)
            outcome = Outcome(False, "text/plain", _expired(request, time.time()))
            try:
                self._answer(request, outcome, self.queue / f".{entry.stem}.out", received, handled)
            finally:
                async_metrics.record(self.metrics, self.endpoint, handled, time.time())
        except Exception as exc:  # one request's trouble must not stop the others
            print(f"openmaker: async invocation {entry.name} failed: {exc!r}", file=sys.stderr)
        finally:
            async_queue.answered(entry)
            with self._lock:
                self._taken.discard(entry)

    def _free(self) -> Instance | None:
        found = []
        for instance in self.instances():
            if not _takes(instance):
                continue
            busy = self._busy.get(instance.plan.id, 0)
            if busy < self.limit:
                found.append((busy, instance))
        return min(found, key=lambda pair: pair[0])[1] if found else None

    def _run(self, entry: Path, instance: Instance) -> None:
        try:
            request = async_queue.read(entry)
            received = datetime.now(UTC)
            handled = Handled(instance.plan.variant, request.queued_at, time.time())
            spool = self.queue / f".{entry.stem}"
            try:
                outcome = self._invoke(request, instance, spool, handled)
            except Refused as exc:
                outcome = Outcome(False, "text/plain", str(exc))
            finally:
                Path(f"{spool}.in").unlink(missing_ok=True)
            handled.ok = outcome.ok
            try:
                self._answer(request, outcome, Path(f"{spool}.out"), received, handled)
            finally:
                async_metrics.record(self.metrics, self.endpoint, handled, time.time())
            Path(f"{spool}.out").unlink(missing_ok=True)
            async_queue.answered(entry)
        except Exception as exc:  # one request's trouble must not stop the others
            print(f"openmaker: async invocation {entry.name} failed: {exc!r}", file=sys.stderr)
            async_queue.answered(entry)
        finally:
            with self._lock:
                self._taken.discard(entry)
                self._busy[instance.plan.id] -= 1
                held = self._held.get(instance.plan.id, {})
                held.pop(entry, None)
                if not held:
                    self._held.pop(instance.plan.id, None)

    def held_until(self, ids: set[str]) -> float | None:
        """When the requests in hand of the instances `ids` end at the latest (monotonic time:
        a request may take its InvocationTimeoutSeconds, plus time to read and write its
        objects); None when they hold none. An instance leaving the route is stopped only then
        (serving/worker.py), so no request in flight is cut short."""
        with self._lock:
            ends = [end for i in ids for end in self._held.get(i, {}).values()]
        return max(ends) if ends else None

    def _invoke(
        self, request: AsyncRequest, instance: Instance, spool: Path, handled: Handled
    ) -> Outcome:
        if time.time() - request.queued_at > request.ttl_seconds:
            handled.expired = True
            raise Refused(_expired(request, time.time()))
        source = Path(f"{spool}.in")
        if request.body is not None:  # given inline: nothing to download
            size = source.write_bytes(base64.b64decode(request.body))
        else:
            fetching = time.perf_counter()
            try:
                size = self._fetch(request.input_location, source)
            except Refused:
                handled.download_failed = True
                raise
            handled.download_seconds = time.perf_counter() - fetching
        host, _, port = instance.address.rpartition(":")
        connection = InstanceConnection(host, int(port), timeout=request.timeout_seconds)
        headers = {"Content-Length": str(size)}
        for name, value in (
            ("Content-Type", request.content_type),
            ("Accept", request.accept),
            ("X-Amzn-SageMaker-Custom-Attributes", request.custom_attributes),
            ("X-Amzn-SageMaker-Inference-Id", request.inference_id),
        ):
            if value is not None:
                headers[name] = value
        deadline = time.monotonic() + request.timeout_seconds
        handled.sent = True
        sent = time.perf_counter()
        try:
            with open(source, "rb") as body:
                connection.request("POST", "/invocations", body=body, headers=headers)
                response = connection.getresponse()
                content_type = response.getheader("Content-Type") or "application/octet-stream"
                status = response.status
                written = self._save(response, Path(f"{spool}.out"), deadline)
            handled.status, handled.model_seconds = status, time.perf_counter() - sent
        except TimeoutError:
            raise Refused(
                f"The model container did not answer within the request's "
                f"InvocationTimeoutSeconds ({request.timeout_seconds})."
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise Refused(f"The model container did not answer: {exc}") from None
        finally:
            connection.close()
        if written > MAX_OUTPUT_BYTES:
            raise Refused(
                f"The model container's answer is larger than the {MAX_OUTPUT_BYTES} bytes an "
                "asynchronous invocation may answer."
            )
        if not 200 <= status < 300:
            kind = "server" if status >= 500 else "client"
            return Outcome(
                False,
                content_type,
                f"ClientError: Received {kind} error ({status}) from model. See the endpoint's "
                f"log group /aws/sagemaker/Endpoints/{self.endpoint} for more information.",
                answered=True,
            )
        return Outcome(True, content_type)

    def _fetch(self, uri: str, target: Path) -> int:
        try:
            location = resolve(uri, self.settings.store)
            size = int(obstore.head(location.store, location.key)["size"])
        except FileNotFoundError:
            raise Refused(f"The input object {uri} does not exist.") from None
        except Exception as exc:  # obstore's errors, for a person
            raise Refused(f"The input object {uri} could not be read: {exc}") from None
        if size > MAX_INPUT_BYTES:
            raise Refused(
                f"The input object {uri} has {size} bytes, more than the {MAX_INPUT_BYTES} an "
                "asynchronous invocation takes."
            )
        try:
            with open(target, "wb") as file:
                for chunk in obstore.get(location.store, location.key).stream():
                    file.write(chunk)
        except Exception as exc:
            raise Refused(f"The input object {uri} could not be read: {exc}") from None
        return size

    def _save(self, response: http.client.HTTPResponse, target: Path, deadline: float) -> int:
        written = 0
        with open(target, "wb") as file:
            while written <= MAX_OUTPUT_BYTES:
                if time.monotonic() > deadline:
                    raise TimeoutError
                data = response.read1(READ_BYTES)
                if not data:
                    break
                file.write(data)
                written += len(data)
        return written

    def _answer(
        self,
        request: AsyncRequest,
        outcome: Outcome,
        output: Path,
        received: datetime,
        handled: Handled,
    ) -> None:
        uploading = time.perf_counter()
        try:
            if outcome.ok:
                location = resolve(request.output_location, self.settings.store)
                obstore.put(location.store, location.key, output)
            elif request.failure_location is not None:
                location = resolve(request.failure_location, self.settings.store)
                failure = output if outcome.answered else outcome.message.encode()
                obstore.put(location.store, location.key, failure)
        except Exception:
            handled.upload_failed, handled.ok = True, False
            raise
        if outcome.ok:
            handled.upload_seconds = time.perf_counter() - uploading
        self._notify(request, outcome, received)

    def _notify(self, request: AsyncRequest, outcome: Outcome, received: datetime) -> None:
        notification = (self.config.get("OutputConfig") or {}).get("NotificationConfig") or {}
        # Each kind goes to its own topic, and none without one (the model's word).
        if not notification.get("SuccessTopic" if outcome.ok else "ErrorTopic"):
            return
        event: dict[str, Any] = {
            "awsRegion": self.settings.region,
            "eventTime": _iso(datetime.now(UTC)),
            "receivedTime": _iso(received),
            "invocationStatus": "Completed" if outcome.ok else "Failed",
        }
        if not outcome.ok:
            event["failureReason"] = outcome.message[:1024]
        event["requestParameters"] = _request_parameters(request, self.endpoint)
        # As SageMaker's: a failure with nowhere to be written has no responseParameters.
        if outcome.ok:
            event["responseParameters"] = {
                "contentType": outcome.content_type,
                "outputLocation": request.output_location,
            }
        elif request.failure_location is not None:
            event["responseParameters"] = {
                "contentType": outcome.content_type,
                "failureLocation": request.failure_location,
            }
        event.update(
            inferenceId=request.inference_id,
            eventVersion="1.0",
            eventSource="aws:sagemaker",
            eventName="InferenceResult",
        )
        self.logs.note(NOTIFICATIONS, json.dumps(event, separators=(",", ":")))


def _expired(request: AsyncRequest, now: float) -> str:
    return (
        f"The request expired: it waited {now - request.queued_at:.0f} s in the queue, longer "
        f"than its RequestTTLSeconds ({request.ttl_seconds})."
    )


def _request_parameters(request: AsyncRequest, endpoint: str) -> dict[str, str]:
    """The request as a notification tells it: only the members the caller gave (SageMaker's
    carry no contentType for a request without one)."""
    given = {
        "accept": request.accept,
        "contentType": request.content_type,
        "customAttributes": request.custom_attributes,
        "endpointName": endpoint,
        "inputLocation": request.input_location if request.body is None else None,
    }
    return {member: value for member, value in given.items() if value is not None}


def _deadline(entry: Path) -> float:
    try:
        timeout = async_queue.read(entry).timeout_seconds
    except (OSError, ValueError, TypeError):
        timeout = TIMEOUT_SECONDS
    return time.monotonic() + timeout + TRANSFER_SECONDS


def _takes(instance: Instance) -> bool:
    """Whether the instance can take requests: its container runs, at a known address."""
    container = instance.container
    return container is not None and container.poll() is None and bool(instance.address)


def _iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def start(
    settings: Settings,
    endpoint: str,
    config: dict[str, Any],
    instances: Callable[[], list[Instance]],
    logs: EndpointLogs,
    writers: sessionmaker[Session],
) -> AsyncRunner | None:
    """The hook the endpoint's worker calls once InService: the runner of its asynchronous
    invocations, when its config asks for them."""
    async_settings = config.get("AsyncInferenceConfig")
    if async_settings is None:
        return None
    variants = config.get("ProductionVariants") or [{}]
    variant = str(variants[0].get("VariantName", ""))
    runner = AsyncRunner(settings, endpoint, async_settings, instances, logs, writers, variant)
    runner.start()
    return runner


def drain(
    runner: AsyncRunner, instances: list[Instance], logs: EndpointLogs, stop: threading.Event
) -> None:
    """Wait for the asynchronous requests in hand of `instances` (out of the route, so given no
    more) to end, each within its own InvocationTimeoutSeconds, rather than cut them short: they
    are answered by the instance that took them, once (the worker's `stop` ends the wait)."""
    ids = {i.plan.id for i in instances}
    if runner.held_until(ids) is None:
        return
    for instance in instances:
        if runner.held_until({instance.plan.id}) is not None:
            logs.note(
                instance.plan.stream,
                f"[openmaker] the instance {instance.plan.id} leaves once its asynchronous "
                "invocations in hand end (each within its InvocationTimeoutSeconds)",
            )
    while True:
        until = runner.held_until(ids)
        if until is None or time.monotonic() >= until or stop.wait(POLL_SECONDS):
            return
