"""What an invocation comes to: a container's answer, or why there is none (for the runtime
API to word as AWS does)."""

from __future__ import annotations

from dataclasses import dataclass, field


class InvocationError(Exception):
    """Why an invocation was not answered: `code` is the runtime's error code."""

    def __init__(self, code: str, status: int, message: str, **extra: object) -> None:
        super().__init__(message)
        self.code, self.status, self.message, self.extra = code, status, message, extra


@dataclass(frozen=True)
class Answer:
    body: bytes
    content_type: str
    variant: str
    headers: dict[str, str] = field(default_factory=dict)
