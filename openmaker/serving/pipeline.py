"""Inference pipelines: a model of 2 to 15 `Containers`, every one of them run on each instance.

The containers of an instance share its network namespace, so each gets a port of its own, as
SageMaker gives it: `SAGEMAKER_BIND_TO_PORT` (the first container's is 8080, where a container
that ignores the variable listens anyway) and `SAGEMAKER_SAFE_PORT_RANGE` ("XXXX-YYYY") for any
further port it needs. Each container's output goes to the stream
`<variant>/<instance-id>/<ContainerHostname>`; a container without a hostname is named after its
place (`container-1`, ...).

`InferenceExecutionConfig.Mode` Serial (the default): a request goes to the first container, its
answer (with its Content-Type) to the next, and the last one's answer is returned. Direct: the
request goes only to the container `TargetContainerHostname` names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from openmaker.serving.refused import Refused

FIRST_PORT = 8080
# Each container's own range of further ports, apart from every container's bind port.
SAFE_PORTS_FROM = 20000
SAFE_PORTS_EACH = 100
SERIAL, DIRECT = "Serial", "Direct"
TARGET_HOSTNAME = "X-Amzn-SageMaker-Target-Container-Hostname"


@dataclass(frozen=True)
class Member:
    """One container of a pipeline, as each instance runs it."""

    index: int  # 0-based, its place in `Containers`
    hostname: str
    container: dict[str, Any]

    @property
    def port(self) -> int:
        return FIRST_PORT + self.index

    @property
    def safe_ports(self) -> str:
        low = SAFE_PORTS_FROM + self.index * SAFE_PORTS_EACH
        return f"{low}-{low + SAFE_PORTS_EACH - 1}"

    def environment(self) -> dict[str, str]:
        return {
            "SAGEMAKER_BIND_TO_PORT": str(self.port),
            "SAGEMAKER_SAFE_PORT_RANGE": self.safe_ports,
        }


def containers(model: dict[str, Any]) -> list[dict[str, Any]]:
    """A model's container definitions, in order."""
    if model.get("PrimaryContainer") is not None:
        return [model["PrimaryContainer"]]
    return list(model.get("Containers") or [])


def members(model: dict[str, Any]) -> tuple[Member, ...]:
    """The pipeline's containers; none for a model of one container."""
    found = containers(model)
    if len(found) < 2:
        return ()
    return tuple(
        Member(i, c.get("ContainerHostname") or f"container-{i + 1}", c)
        for i, c in enumerate(found)
    )


def mode(model: dict[str, Any]) -> str:
    return str((model.get("InferenceExecutionConfig") or {}).get("Mode") or SERIAL)


def chosen(model: dict[str, Any], endpoint: str, hostname: str | None) -> Sequence[Member]:
    """The containers a request goes through, in order (none: the model has one container, and
    the request goes to it as to any)."""
    pipeline = members(model)
    direct = bool(pipeline) and mode(model) == DIRECT
    if hostname is not None and not direct:
        raise Refused(
            f"Endpoint {endpoint} is not configured for direct invocation: "
            "TargetContainerHostname cannot be given",
        )
    if not direct:
        return pipeline
    if hostname is None:
        raise Refused(
            f"Endpoint {endpoint} is configured for direct invocation: TargetContainerHostname "
            "must name one of its containers",
        )
    named = [m for m in pipeline if m.hostname == hostname]
    if not named:
        raise Refused(
            f"TargetContainerHostname {hostname} is not a container of endpoint {endpoint}",
        )
    return named


class Answered(Protocol):
    @property
    def body(self) -> bytes: ...

    @property
    def content_type(self) -> str: ...


AnswerT = TypeVar("AnswerT", bound=Answered)


def run(
    chain: Sequence[Member],
    forward: Callable[[Member, bytes, dict[str, str]], AnswerT],
    body: bytes,
    headers: dict[str, str],
) -> AnswerT:
    """The request through `chain` (`forward` sends it to one container): each container's
    answer is the next one's request."""
    answer: AnswerT | None = None
    for member in chain:
        if answer is not None:
            body = answer.body
            headers = {**headers, "Content-Type": answer.content_type}
        answer = forward(member, body, headers)
    assert answer is not None, "a chain has a container"
    return answer


class Process(Protocol):
    def poll(self) -> int | None: ...

    def stop(self, grace: float) -> int: ...


class ContainerGroup:
    """An instance's pipeline containers, looked after as one: it has ended when any of them
    has (the worker then starts them all again), and stopping it stops each."""

    def __init__(self, processes: Sequence[Process]) -> None:
        self.processes = list(processes)

    def poll(self) -> int | None:
        for process in self.processes:
            code = process.poll()
            if code is not None:
                return code
        return None

    def stop(self, grace: float) -> int:
        """Stop them all at once (each within the grace, not one grace after another)."""
        with ThreadPoolExecutor(len(self.processes)) as pool:
            codes = list(pool.map(lambda process: process.stop(grace), self.processes))
        return next((c for c in codes if c != 0), 0)
