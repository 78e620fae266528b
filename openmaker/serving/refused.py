"""A request refused before any container saw it, for the runtime API to word as AWS does."""

from __future__ import annotations


class Refused(ValueError):
    """The request does not fit the endpoint (a `ValidationError`); the message says why."""
