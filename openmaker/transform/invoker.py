"""Posting mini-batches to an instance's container (`POST /invocations` on 8080), and asking it
for its execution parameters (`GET /execution-parameters`).

An inference pipeline's instance (Serial) gets each mini-batch through its containers, as an
endpoint's does (serving/pipeline.py): each one's answer is the next one's request, on its own
port, and the last one's answer is the output.

Each thread keeps its own connection to its instance. `ModelClientConfig` says how long a
request may take and how often one that failed for want of an answer (no connection, a timeout,
a 5xx) is tried again; a 4xx is the container refusing the input, never retried. A stop aborts
every connection: a container killed with its network may never close its end.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from openmaker.serving import pipeline
from openmaker.serving.pipeline import Member
from openmaker.store import abort

# SageMaker's defaults for ModelClientConfig.
DEFAULT_TIMEOUT_SECONDS = 600
DEFAULT_RETRIES = 3
PARAMETERS_SECONDS = 5.0
_EXCERPT = 300


class InvocationError(Exception):
    """A mini-batch could not be transformed; the message says why, for a person."""


class Aborted(InvocationError):
    """The invoker was aborted (the job is stopping): no request goes on."""


@dataclass(frozen=True)
class Invocation:
    content_type: str | None
    accept: str | None
    timeout: float = DEFAULT_TIMEOUT_SECONDS
    retries: int = DEFAULT_RETRIES


@dataclass(frozen=True)
class _Answer:
    body: bytes
    content_type: str


class Invoker:
    def __init__(self, address: str, invocation: Invocation, chain: Sequence[Member] = ()) -> None:
        """`chain`: an inference pipeline's containers, in order (none: one container)."""
        host, _, port = address.rpartition(":")
        self.host, self.port, self.invocation = host, int(port), invocation
        self.chain = tuple(chain)
        self._local = threading.local()
        self._abort = abort.Abort()

    def invoke(self, body: bytes, chunked: bool = False) -> bytes:
        headers = {}
        if self.invocation.content_type:
            headers["Content-Type"] = self.invocation.content_type
        if self.invocation.accept:
            headers["Accept"] = self.invocation.accept
        if not self.chain:
            return self._post(self.port, body, headers, chunked).body
        first = self.chain[0]

        def forward(member: Member, data: bytes, sent: dict[str, str]) -> _Answer:
            try:
                return self._post(member.port, data, sent, chunked and member is first)
            except Aborted:
                raise
            except InvocationError as exc:
                raise InvocationError(f"container {member.hostname}: {exc}") from None

        return pipeline.run(self.chain, forward, body, headers).body

    def _post(self, port: int, body: bytes, headers: dict[str, str], chunked: bool) -> _Answer:
        why = ""
        for _ in range(self.invocation.retries + 1):
            connection = self._connection(port)
            try:
                if self._abort.aborted:
                    raise Aborted("the job was stopped")
                if chunked:
                    chunks = (body[i : i + 1024 * 1024] for i in range(0, len(body), 1024 * 1024))
                    connection.request("POST", "/invocations", chunks, headers, encode_chunked=True)
                else:
                    connection.request("POST", "/invocations", body, headers)
                # Connected now: an abort from here on shuts this socket down.
                self._abort.opened(connection)
                response = connection.getresponse()
                answer = response.read()
            except abort.Aborted:
                raise Aborted("the job was stopped") from None
            except TimeoutError:
                self._drop(port)
                why = f"the container did not answer within {self.invocation.timeout:g} seconds"
                continue
            except (OSError, http.client.HTTPException) as exc:
                self._drop(port)
                why = f"the container could not be reached ({exc or type(exc).__name__})"
                continue
            if response.status == 200:
                return _Answer(answer, response.getheader("Content-Type") or "")
            why = f"the container answered {response.status}: {_excerpt(answer)}"
            if response.status < 500:
                break
        raise InvocationError(why)

    def execution_parameters(self) -> dict[str, Any]:
        """What `GET /execution-parameters` answers, or {} when the container offers none."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=PARAMETERS_SECONDS)
        try:
            connection.request("GET", "/execution-parameters")
            response = connection.getresponse()
            answer = response.read()
            if response.status != 200:
                return {}
            parsed = json.loads(answer)
            return parsed if isinstance(parsed, dict) else {}
        except (OSError, http.client.HTTPException, ValueError):
            return {}
        finally:
            connection.close()

    def close(self) -> None:
        for port in list(self._connections()):
            self._drop(port)

    def abort(self) -> None:
        """End every request in flight now, and refuse the next ones (from any thread)."""
        self._abort.abort()

    def _connections(self) -> dict[int, http.client.HTTPConnection]:
        """This thread's connections, by port (one per container of a pipeline)."""
        found: dict[int, http.client.HTTPConnection] | None = getattr(
            self._local, "connections", None
        )
        if found is None:
            found = self._local.connections = {}
        return found

    def _connection(self, port: int) -> http.client.HTTPConnection:
        connections = self._connections()
        if port not in connections:
            connections[port] = http.client.HTTPConnection(
                self.host, port, timeout=self.invocation.timeout
            )
        return connections[port]

    def _drop(self, port: int) -> None:
        connection = self._connections().pop(port, None)
        if connection is not None:
            self._abort.closed(connection)
            connection.close()


def _excerpt(answer: bytes) -> str:
    text = answer[:_EXCERPT].decode("utf-8", "replace").strip()
    return (text + "…" if len(answer) > _EXCERPT else text) or "(no body)"
