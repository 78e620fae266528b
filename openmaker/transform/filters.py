"""`DataProcessing`: which part of each input record the container gets (`InputFilter`), whether
each output record is joined with its input (`JoinSource: Input`), and which part of the result
is kept (`OutputFilter`), as SageMaker documents them for CSV and JSON (Lines) records.

The filters are the JSONPath subset SageMaker supports: `$` (all), then steps `.name`,
`['name', ...]`, `[index, ...]` and `[start:end]` (negative indices count from the end). A CSV
record is an array of its columns; a join appends the output's columns to the input's. A JSON
object gets the output as its `SageMakerOutput` attribute; any other JSON value is wrapped as
`{"SageMakerInput": ..., "SageMakerOutput": ...}`. Joining pairs each input record with one
line of the container's answer, so it needs `SplitType: Line`.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from typing import Any

_STEP = re.compile(r"\.(?P<name>[A-Za-z_][\w-]*)|\[(?P<inner>[^\[\]]*)\]")
_SLICE = re.compile(r"^\s*(-?\d+)?\s*:\s*(-?\d+)?\s*$")
_QUOTED = re.compile(r"""^\s*(?:'([^']*)'|"([^"]*)")\s*$""")


class FilterError(ValueError):
    """A record the filters cannot apply to; the message says which, for a person."""


@dataclass(frozen=True)
class Step:
    names: tuple[str, ...] = ()
    indices: tuple[int, ...] = ()
    span: tuple[int | None, int | None] | None = None
    many: bool = False  # a list or slice: the result is an array (or object), not one value


def parse(path: str, member: str) -> list[Step]:
    """The steps of `path`; ValueError naming `member` for what the subset does not hold."""
    if not path.startswith("$"):
        raise ValueError(f"{member}: a JSONPath starts with $: {path!r}")
    steps: list[Step] = []
    rest = path[1:]
    while rest:
        found = _STEP.match(rest)
        if found is None:
            raise ValueError(f"{member}: {path!r} is not in the JSONPath subset SageMaker supports")
        rest = rest[found.end() :]
        if found["name"]:
            steps.append(Step(names=(found["name"],)))
        else:
            steps.append(_bracket(found["inner"], path, member))
    return steps


def _bracket(inner: str, path: str, member: str) -> Step:
    if inner.strip() == "*":
        return Step(span=(None, None), many=True)
    if span := _SLICE.match(inner):
        start, end = (int(v) if v is not None else None for v in span.groups())
        return Step(span=(start, end), many=True)
    parts = inner.split(",")
    quoted = [_QUOTED.match(p) for p in parts]
    if all(quoted):
        names = tuple(q[1] if q[1] is not None else q[2] for q in quoted if q)
        return Step(names=names, many=len(names) > 1)
    try:
        indices = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(
            f"{member}: {path!r} is not in the JSONPath subset SageMaker supports"
        ) from None
    return Step(indices=indices, many=len(indices) > 1)


def select(value: Any, steps: list[Step]) -> Any:
    for step in steps:
        value = _apply(value, step)
    return value


def _apply(value: Any, step: Step) -> Any:
    if step.names:
        if not isinstance(value, dict):
            raise FilterError(f"attribute {step.names[0]!r} asked of a value that is no object")
        missing = [n for n in step.names if n not in value]
        if missing:
            raise FilterError(f"the record has no attribute {missing[0]!r}")
        if step.many:
            return {n: value[n] for n in step.names}
        return value[step.names[0]]
    if not isinstance(value, list):
        raise FilterError("an index asked of a value that is no array")
    if step.span is not None:
        return value[step.span[0] : step.span[1]]
    try:
        picked = [value[i] for i in step.indices]
    except IndexError:
        raise FilterError(f"index out of range for a record of {len(value)} values") from None
    return picked if step.many else picked[0]


def _is_csv(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() == "text/csv"


class DataProcessing:
    def __init__(
        self,
        config: dict[str, Any] | None,
        content_type: str | None,
        accept: str | None,
    ) -> None:
        config = config or {}
        self.input_steps = parse(config.get("InputFilter", "$"), "DataProcessing.InputFilter")
        self.output_steps = parse(config.get("OutputFilter", "$"), "DataProcessing.OutputFilter")
        self.join = config.get("JoinSource", "None") == "Input"
        self.csv_in = _is_csv(content_type)
        self.csv_out = _is_csv(accept) if accept else self.csv_in

    @property
    def passthrough(self) -> bool:
        return not (self.input_steps or self.output_steps or self.join)

    def input(self, record: memoryview) -> memoryview:
        """What the container gets of `record`."""
        if not self.input_steps:
            return record
        value = select(self._parse(bytes(record), self.csv_in), self.input_steps)
        return memoryview(self._format(value, self.csv_in))

    def outputs(self, inputs: list[memoryview], answer: bytes) -> list[bytes]:
        """The output records of a mini-batch of `inputs` the container answered `answer` to."""
        if self.passthrough:
            return [answer]
        lines = [line for line in answer.splitlines() if line.strip()]
        if self.join and len(lines) != len(inputs):
            raise FilterError(
                f"JoinSource Input pairs each input record with a line of the answer: the "
                f"container answered {len(lines)} lines for {len(inputs)} records"
            )
        found = []
        for index, line in enumerate(lines):
            output = self._parse(line, self.csv_out)
            if self.join:
                output = self._joined(self._parse(bytes(inputs[index]), self.csv_in), output)
            found.append(self._format(select(output, self.output_steps), self.csv_out))
        return found

    def _joined(self, source: Any, output: Any) -> Any:
        if self.csv_in and self.csv_out:
            return [*source, *(output if isinstance(output, list) else [output])]
        if isinstance(source, dict):
            return {**source, "SageMakerOutput": output}
        return {"SageMakerInput": source, "SageMakerOutput": output}

    @staticmethod
    def _parse(data: bytes, is_csv: bool) -> Any:
        text = data.decode("utf-8", "replace").strip("\r\n")
        if is_csv:
            return next(csv.reader([text]), [])
        try:
            return json.loads(text)
        except ValueError:
            raise FilterError(f"a record is not JSON: {text[:100]!r}") from None

    @staticmethod
    def _format(value: Any, is_csv: bool) -> bytes:
        if is_csv:
            row = value if isinstance(value, list) else [value]
            out = io.StringIO()
            csv.writer(out, lineterminator="\n").writerow(row)
            return out.getvalue().encode()
        return (json.dumps(value, separators=(",", ":")) + "\n").encode()
