"""`AlgorithmSpecification.MetricDefinitions`: each regex is tried on every log line; its first
group (or the whole match when it has none) is the metric's value, as SageMaker reads it."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from openmaker.training.host.events import Emit, Event, LogLine, LogLines, MetricSample
from openmaker.training.host.plan import MetricDefinition


def compile_definitions(
    definitions: Sequence[MetricDefinition],
) -> list[tuple[str, re.Pattern[str]]]:
    """Raises re.error for a regex Python cannot compile (checked when the job is created)."""
    return [(d.name, re.compile(d.regex)) for d in definitions]


def metric_emitter(definitions: Sequence[MetricDefinition], emit: Emit) -> Emit:
    """`emit`, plus a MetricSample after each log line where a definition matches."""
    compiled = compile_definitions(definitions)
    if not compiled:
        return emit

    def emit_with_metrics(event: Event) -> None:
        emit(event)
        if isinstance(event, LogLine):
            messages = [event.message]
        elif isinstance(event, LogLines):
            messages = event.messages
        else:
            return
        for message in messages:
            for name, regex in compiled:
                value = _value(regex, message)
                if value is not None:
                    emit(MetricSample(name, event.timestamp_ms, value, event.host))

    return emit_with_metrics


def _value(regex: re.Pattern[str], line: str) -> float | None:
    found = regex.search(line)
    if found is None:
        return None
    text = found.group(1) if regex.groups else found.group(0)
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    # NaN and infinities are not values a metric can chart (nor JSON carry).
    return value if math.isfinite(value) else None
