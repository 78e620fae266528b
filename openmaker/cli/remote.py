"""Training jobs through a running `openmaker server`, with boto3: what the CLI uses when
`AWS_ENDPOINT_URL_SAGEMAKER` points at one. Same methods and results as `TrainingJobs`."""

from __future__ import annotations

import builtins
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import boto3
import botocore.session
from botocore.exceptions import BotoCoreError, ClientError

from openmaker.jobs.logs import LOG_GROUP, LogRecord
from openmaker.shapes.errors import ServiceError
from openmaker.shapes.model import plain_loader

T = TypeVar("T")


@functools.cache
def client(service: str) -> Any:
    """The command's one client of `service` (made once: 0.1 s each)."""
    return _session().client(service)  # type: ignore[call-overload]


@functools.cache
def _session() -> boto3.session.Session:
    core = botocore.session.Session()
    # The models read into plain dicts: 2-3x faster than botocore's own loader.
    core.register_component("data_loader", plain_loader(core.get_config_variable("data_path")))
    return boto3.session.Session(botocore_session=core)


class RemoteError(ServiceError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class RemoteJobs:
    def __init__(self) -> None:
        # Per log stream, the token after the last line returned, and a running line number.
        self._tokens: dict[str, str] = {}
        self._returned = 0

    # Each client is made when first used: `jobs list` needs no logs client.
    @functools.cached_property
    def sagemaker(self) -> Any:
        return client("sagemaker")

    @functools.cached_property
    def logs(self) -> Any:
        return client("logs")

    def create(self, request: dict[str, Any]) -> dict[str, str]:
        return _call(lambda: self.sagemaker.create_training_job(**request))

    def describe(self, name: str) -> dict[str, Any]:
        found = _call(lambda: self.sagemaker.describe_training_job(TrainingJobName=name))
        found.pop("ResponseMetadata", None)
        return found

    def list(
        self, status: str | None = None, name_contains: str | None = None
    ) -> list[dict[str, Any]]:
        arguments: dict[str, Any] = {"SortOrder": "Descending", "MaxResults": 100}
        if status:
            arguments["StatusEquals"] = status
        if name_contains:
            arguments["NameContains"] = name_contains
        pages = self.sagemaker.get_paginator("list_training_jobs").paginate(**arguments)
        return _call(lambda: [s for page in pages for s in page["TrainingJobSummaries"]])

    def stop(self, name: str) -> None:
        _call(lambda: self.sagemaker.stop_training_job(TrainingJobName=name))

    def sweep(self) -> None:
        """The server sweeps its own jobs: nothing to do from here."""

    def progress(self, name: str) -> dict[str, Any] | None:
        """Transfer figures are not part of the SageMaker API: a remote job shows none."""
        return None

    # After `list` above, `builtins.list` names the type.
    def log_events(
        self, name: str, after_id: int = 0, limit: int = 1000
    ) -> builtins.list[LogRecord]:
        """The job's log lines this object has not returned yet (`after_id` is not needed:
        each stream's position is kept here, as the sagemaker SDK keeps it)."""
        records: builtins.list[LogRecord] = []
        for stream in self._streams(name):
            arguments: dict[str, Any] = {
                "logGroupName": LOG_GROUP,
                "logStreamName": stream,
                "startFromHead": True,
                "limit": limit,
            }
            if stream in self._tokens:
                arguments["nextToken"] = self._tokens[stream]
            found = _call(functools.partial(self.logs.get_log_events, **arguments))
            self._tokens[stream] = found["nextForwardToken"]
            for event in found["events"]:
                self._returned += 1
                records.append(
                    LogRecord(self._returned, stream, event["timestamp"], event["message"])
                )
        return sorted(records, key=lambda r: (r.timestamp, r.id))

    def iter_log_events(self, name: str) -> Iterator[LogRecord]:
        while batch := self.log_events(name):
            yield from batch

    def _streams(self, name: str) -> builtins.list[str]:
        pages = self.logs.get_paginator("describe_log_streams").paginate(
            logGroupName=LOG_GROUP, logStreamNamePrefix=f"{name}/"
        )
        return _call(lambda: [s["logStreamName"] for p in pages for s in p["logStreams"]])


def _call(action: Callable[[], T]) -> T:
    try:
        return action()
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise RemoteError(error.get("Code", "Unknown"), error.get("Message", str(exc))) from None
    except BotoCoreError as exc:
        raise RemoteError("ConnectionError", f"cannot reach the openmaker server: {exc}") from None
