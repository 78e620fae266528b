"""Unique resource names, as the SageMaker SDK's `name_from_base` makes them."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from openmaker.shapes.model import shape

# The characters TrainingJobName's pattern allows are letters, digits and "-"; the pattern
# itself (checked in the tests) also wants a letter or digit first and last.
_REFUSED = re.compile(r"[^a-zA-Z0-9-]+")


def unique_name(base: str) -> str:
    """`<base>-<UTC time to the millisecond>`, e.g. "demo-2024-05-01-12-30-00-123".

    The base is cleaned so that the result is a valid TrainingJobName: runs of refused
    characters become "-", and it is cut so that the whole fits the model's maximum length.
    """
    stamp = datetime.now(UTC).strftime("%Y-%m-%d-%H-%M-%S-%f")[:-3]  # %f is microseconds
    max_length = shape("TrainingJobName").metadata["max"]
    clean = _REFUSED.sub("-", base).strip("-")
    clean = clean[: max_length - len(stamp) - 1].rstrip("-")
    return f"{clean}-{stamp}" if clean else stamp
