"""A hyperparameter's value against its `HyperParameterSpecification`: type, range, values."""

from __future__ import annotations

import math
from typing import Any

_RANGES = {
    "Integer": "IntegerParameterRangeSpecification",
    "Continuous": "ContinuousParameterRangeSpecification",
    "Categorical": "CategoricalParameterRangeSpecification",
}


def value_problem(spec: dict[str, Any], value: str) -> str | None:
    """Why `value` is no value of the hyperparameter `spec` describes, as a constraint."""
    kind = spec["Type"]
    ranges = (spec.get("Range") or {}).get(_RANGES.get(kind, ""))
    if kind == "Categorical":
        allowed = (ranges or {}).get("Values")
        if allowed and value not in allowed:
            return f"Member must be one of the algorithm's values: {', '.join(allowed)}"
        return None
    if kind not in ("Integer", "Continuous"):
        return None  # FreeText
    number = _number(value, kind)
    if number is None:
        noun = "an integer" if kind == "Integer" else "a number"
        return f"Member must be {noun} (the algorithm's {kind} hyperparameter)"
    if ranges:
        low, high = _number(ranges["MinValue"], kind), _number(ranges["MaxValue"], kind)
        if (low is not None and number < low) or (high is not None and number > high):
            return (
                f"Member must be within the algorithm's range "
                f"[{ranges['MinValue']}, {ranges['MaxValue']}]"
            )
    return None


def spec_problem(spec: dict[str, Any]) -> str | None:
    """Why a `SupportedHyperParameters` entry cannot be, as a constraint; None when it can."""
    kind, given = spec["Type"], spec.get("Range") or {}
    wrong = [name for name in given if name != _RANGES.get(kind)]
    if wrong:
        return f"Member must give a range of its Type ({kind}), not {wrong[0]}"
    ranges = given.get(_RANGES.get(kind, ""))
    if ranges and kind != "Categorical":
        low, high = _number(ranges["MinValue"], kind), _number(ranges["MaxValue"], kind)
        if low is None or high is None or low > high:
            return f"Member must give a {kind} range whose MinValue is at most its MaxValue"
    default = spec.get("DefaultValue")
    if default is not None and (why := value_problem(spec, default)) is not None:
        return f"DefaultValue: {why}"
    return None


def _number(value: str, kind: str) -> float | None:
    try:
        number = int(value) if kind == "Integer" else float(value)
    except ValueError:
        return None
    return None if isinstance(number, float) and not math.isfinite(number) else number
