"""Checking requests (and openmaker's responses) against the botocore model.

botocore's own ParamValidator checks types, required members and minimums only; SageMaker also
enforces maximums, patterns and enums, so this walker checks every constraint the model states
and words each problem the way AWS does:

    Value 'x y' at 'TrainingJobName' failed to satisfy constraint: Member must satisfy ...

The model's patterns are Java regular expressions, matched against the whole value;
`compile_pattern` translates the few Java constructs Python's `re` reads differently.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
import unicodedata
import warnings
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from botocore.model import ListShape, MapShape, Shape, StructureShape

from openmaker.shapes.errors import ValidationException
from openmaker.shapes.model import operation_model

log = logging.getLogger(__name__)

# Values longer than this are cut in messages: a 2,500-character hyperparameter helps no one.
_SHOWN_CHARS = 100
_CONTAINERS = ("structure", "list", "map")


def validate_input(operation: str, params: Mapping[str, Any], service: str = "sagemaker") -> None:
    """Raise one ValidationException listing every way `params` breaks the operation's input."""
    problems = shape_problems(operation_model(operation, service).input_shape, params)
    if problems:
        raise ValidationException(error_message(problems))


# Output members the model marks required that AWS itself leaves out: a training job has no
# ModelArtifacts until its outputs are written (none at all when stopped or failed before).
_OMITTED_BY_AWS = {("sagemaker", "DescribeTrainingJob"): frozenset({"ModelArtifacts"})}


def validate_output(operation: str, data: Any, service: str = "sagemaker") -> list[str]:
    """Every way `data` breaks the operation's output shape (timestamps may be datetimes)."""
    problems = shape_problems(operation_model(operation, service).output_shape, data)
    omitted = _OMITTED_BY_AWS.get((service, operation), frozenset())
    return [p for p in problems if not any(p == null_failure(name) for name in omitted)]


def error_message(problems: list[str]) -> str:
    """AWS's summary: "2 validation errors detected: <problem>; <problem>"."""
    count = len(problems)
    noun = "validation error" if count == 1 else "validation errors"
    return f"{count} {noun} detected: " + "; ".join(problems)


def failure(value: Any, path: str, constraint: str) -> str:
    """One problem, worded as AWS words it."""
    return f"Value {_show(value)} at '{path}' failed to satisfy constraint: {constraint}"


def null_failure(path: str) -> str:
    return f"Value null at '{path}' failed to satisfy constraint: Member must not be null"


def shape_problems(shape: Shape | None, value: Any, path: str = "") -> list[str]:
    """Every way `value` breaks `shape`; member paths are dotted, list items `Name.1.member`."""
    if shape is None:  # an operation that takes or returns nothing
        if value:
            return [f"Unknown parameters {sorted(value)}: the operation takes none"]
        return []
    problems: list[str] = []
    _walk(shape, value, path or shape.name, problems, root=not path)
    return problems


def _walk(shape: Shape, value: Any, path: str, problems: list[str], root: bool = False) -> None:
    if isinstance(shape, StructureShape):
        _walk_structure(shape, value, path, problems, root)
    elif isinstance(shape, ListShape):
        _walk_list(shape, value, path, problems)
    elif isinstance(shape, MapShape):
        _walk_map(shape, value, path, problems)
    else:
        problems.extend(failure(value, path, c) for c in scalar_failures(shape, value))


def _walk_structure(
    shape: StructureShape, value: Any, path: str, problems: list[str], root: bool
) -> None:
    if shape.is_document_type:  # free-form JSON: nothing to check
        return
    if not isinstance(value, Mapping):
        problems.append(failure(value, path, _type_constraint("structure", value)))
        return
    # Members of the request itself are named bare ("RoleArn"), nested ones dotted.
    prefix = "" if root else f"{path}."
    members = shape.members
    for name, member in members.items():
        item = value.get(name)
        if item is None:  # JSON null counts as absent, as it does for AWS
            if name in shape.required_members:
                problems.append(null_failure(prefix + name))
            continue
        _walk(member, item, prefix + name, problems)
    problems.extend(
        f"Unknown parameter at '{prefix}{name}': {shape.name} has no member named '{name}'"
        for name in value
        if name not in members
    )
    if shape.is_tagged_union:
        given = [name for name in members if value.get(name) is not None]
        if len(given) != 1:
            constraint = f"Member must set exactly one of: {', '.join(members)} (got {len(given)})"
            problems.append(failure(value, path, constraint))


def _walk_list(shape: ListShape, value: Any, path: str, problems: list[str]) -> None:
    if not isinstance(value, list | tuple):
        problems.append(failure(value, path, _type_constraint("list", value)))
        return
    problems.extend(failure(value, path, c) for c in _bound_failures(shape, len(value), "length"))
    for index, item in enumerate(value, 1):
        item_path = f"{path}.{index}.member"
        if item is None:
            problems.append(null_failure(item_path))
        else:
            _walk(shape.member, item, item_path, problems)


def _walk_map(shape: MapShape, value: Any, path: str, problems: list[str]) -> None:
    if not isinstance(value, Mapping):
        problems.append(failure(value, path, _type_constraint("map", value)))
        return
    problems.extend(failure(value, path, c) for c in _bound_failures(shape, len(value), "length"))
    # AWS reports scalar keys and values once per map, listing the constraints they break.
    key_failures: dict[str, None] = {}  # ordered set
    value_failures: dict[str, None] = {}
    for key, item in value.items():
        key_failures.update(dict.fromkeys(scalar_failures(shape.key, key)))
        if item is None:
            value_failures["Member must not be null"] = None
        elif shape.value.type_name in _CONTAINERS:
            _walk(shape.value, item, f"{path}.{key}", problems)
        else:
            value_failures.update(dict.fromkeys(scalar_failures(shape.value, item)))
    if key_failures:
        constraint = f"Map keys must satisfy constraint: [{', '.join(key_failures)}]"
        problems.append(failure(value, path, constraint))
    if value_failures:
        constraint = f"Map value must satisfy constraint: [{', '.join(value_failures)}]"
        problems.append(failure(value, path, constraint))


def scalar_failures(shape: Shape, value: Any) -> list[str]:
    """The constraints ("Member must ...") a string, number, blob, boolean or timestamp breaks."""
    kind = shape.type_name
    if not _has_type(kind, value):
        return [_type_constraint(kind, value)]
    metadata = shape.metadata
    if kind == "string":
        failures = _bound_failures(shape, len(value), "length")
        if (
            "enum" in metadata
            and value not in metadata["enum"]
            and not _openmaker_extension(shape, value)
        ):
            failures.append(f"Member must satisfy enum value set: [{', '.join(metadata['enum'])}]")
        pattern = metadata.get("pattern")
        if (
            pattern is not None
            and not pattern_matches(pattern, value)
            and not _openmaker_extension(shape, value)
        ):
            failures.append(f"Member must satisfy regular expression pattern: {pattern}")
        return failures
    if kind == "blob":
        return _bound_failures(shape, len(value), "length")
    if kind in ("integer", "long", "double", "float"):
        return _bound_failures(shape, value, "value")
    return []


# openmaker's widenings of the model: where SageMaker takes an S3 URI, a local folder given as
# a file:// URI works too (the same requests then run on data that never left the machine);
# the instance type `ml.local` (or `local`, as the SageMaker SDK's local mode says) is this
# whole machine.
_LOCAL_URI = re.compile(r"file:///[^\x00]*")
LOCAL_INSTANCE_TYPES = frozenset({"local", "ml.local"})


def _openmaker_extension(shape: Shape, value: str) -> bool:
    if shape.name == "TrainingInstanceType":
        return value in LOCAL_INSTANCE_TYPES
    return shape.name == "S3Uri" and _LOCAL_URI.fullmatch(value) is not None


def _bound_failures(shape: Shape, size: float, what: str) -> list[str]:
    metadata = shape.metadata
    failures = []
    if "min" in metadata and size < metadata["min"]:
        failures.append(f"Member must have {what} greater than or equal to {metadata['min']}")
    if "max" in metadata and size > metadata["max"]:
        failures.append(f"Member must have {what} less than or equal to {metadata['max']}")
    return failures


def _has_type(kind: str, value: Any) -> bool:
    is_bool = isinstance(value, bool)  # bool is an int in Python, never a number in JSON
    if kind == "string":
        return isinstance(value, str)
    if kind in ("integer", "long"):
        return isinstance(value, int) and not is_bool
    if kind in ("double", "float"):
        return isinstance(value, int | float) and not is_bool
    if kind == "boolean":
        return is_bool
    if kind == "timestamp":
        return _is_timestamp(value)
    if kind == "blob":
        return isinstance(value, bytes | bytearray | str)  # str: base64 on the JSON wire
    return True  # a type a later model may add: not ours to refuse


def _is_timestamp(value: Any) -> bool:
    # JSON clients send epoch seconds; botocore also accepts ISO 8601 strings.
    if isinstance(value, datetime):
        return True
    if isinstance(value, int | float):
        return not isinstance(value, bool)
    if isinstance(value, str):
        try:
            datetime.fromisoformat(value)
        except ValueError:
            return False
        return True
    return False


_JSON_TYPES = {bool: "boolean", str: "string", int: "integer", float: "number", type(None): "null"}


def _type_constraint(kind: str, value: Any) -> str:
    if isinstance(value, Mapping):
        got = "object"
    elif isinstance(value, list | tuple):
        got = "list"
    else:
        got = _JSON_TYPES.get(type(value), type(value).__name__)
    return f"Member must be of type {kind} (got {got})"


def _show(value: Any) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, bytes | bytearray):
        text = f"<{len(value)} bytes>"
    elif isinstance(value, Mapping | list | tuple):
        try:
            text = json.dumps(value, default=str, ensure_ascii=False)
        except (TypeError, ValueError):
            text = str(value)
    else:
        text = str(value)
    if len(text) > _SHOWN_CHARS:
        text = text[:_SHOWN_CHARS] + "..."
    return f"'{text}'"


# --- The model's patterns: Java regular expressions, read by Python's `re` ---------------------


def pattern_matches(pattern: str, value: str) -> bool:
    """Whether the WHOLE value matches a model pattern (they are written unanchored)."""
    compiled = compile_pattern(pattern)
    return compiled is None or compiled.fullmatch(value) is not None


@functools.cache
def compile_pattern(pattern: str) -> re.Pattern[str] | None:
    """A model pattern as a Python regex, or None (logged) when it cannot be translated.

    Compiled with re.ASCII because Java's \\d, \\w, \\s and \\b are ASCII-only by default.
    """
    try:
        with warnings.catch_warnings():
            # A FutureWarning means Python reads a set differently (e.g. "[a[b]]", "&&").
            warnings.simplefilter("error", FutureWarning)
            return re.compile(java_to_python(pattern), re.ASCII)
    except (re.error, FutureWarning, UntranslatablePattern) as exc:
        log.warning("not checking model pattern %r: Python cannot read it (%s)", pattern, exc)
        return None


class UntranslatablePattern(ValueError):
    """A Java regex construct `java_to_python` does not translate."""


# Java's `.` stops at every line terminator, Python's only at \n.
_JAVA_DOT = r"[^\n\r\x85\u2028\u2029]"
# Java's POSIX classes are ASCII-only by default.
_POSIX_SETS = {
    "Lower": "a-z",
    "Upper": "A-Z",
    "ASCII": r"\x00-\x7f",
    "Alpha": "a-zA-Z",
    "Digit": "0-9",
    "Alnum": "a-zA-Z0-9",
    "Punct": r"\x21-\x2f\x3a-\x40\x5b-\x60\x7b-\x7e",
    "Graph": r"\x21-\x7e",
    "Print": r"\x20-\x7e",
    "Blank": r" \t",
    "Cntrl": r"\x00-\x1f\x7f",
    "XDigit": "0-9a-fA-F",
    "Space": r" \t\n\x0b\f\r",
}


def java_to_python(pattern: str) -> str:
    """Translate the Java regex constructs the AWS models use that Python lacks or reads
    differently: \\p{..} classes, UTF-16 surrogate pairs, \\z, Java's `.`, a quantified
    anchor (`$ {1,128}`) and a literal `-` after a set in a class (`[\\w-_]`).
    Raises UntranslatablePattern for Java-only constructs it does not handle."""
    out: list[str] = []
    i, size = 0, len(pattern)
    in_class = False
    class_body = 0  # where the current class's items begin: a `]` there is a literal
    after_set = False  # the previous class item was a set like \w: a `-` after it is literal
    while i < size:
        char = pattern[i]
        if char == "\\":
            token, i, is_set = _escape(pattern, i, in_class)
            out.append(token)
            after_set = in_class and is_set
            continue
        i += 1
        if in_class:
            if char == "]" and i - 1 > class_body:
                in_class = False
            elif char == "[" or (char == "&" and pattern.startswith("&", i)):
                raise UntranslatablePattern("nested class or class intersection")
            elif char == "-" and after_set and pattern[i : i + 1] != "]":
                char = r"\-"
            after_set = False
            out.append(char)
        elif char == "[":
            in_class = True
            class_body = i + (pattern[i : i + 1] == "^")
            out.append(char)
        elif char == ".":
            out.append(_JAVA_DOT)
        elif char in "^$" and pattern[i : i + 1] in ("*", "+", "?", "{"):
            out.append(f"(?:{char})")  # Java lets an anchor be repeated, Python does not
        else:
            out.append(char)
    return "".join(out)


def _escape(pattern: str, i: int, in_class: bool) -> tuple[str, int, bool]:
    """Translate the escape at pattern[i]: (python text, index after it, is it a set)."""
    letter = pattern[i + 1 : i + 2]
    if not letter:
        raise UntranslatablePattern("trailing backslash")
    if letter in ("p", "P"):
        name, end = _property_name(pattern, i + 2)
        items = _property_items(name)
        if not in_class:
            return f"[{'^' if letter == 'P' else ''}{items}]", end, True
        if letter == "P":
            raise UntranslatablePattern(f"\\P{{{name}}} inside a class")
        return items, end, True
    if letter == "u":
        code, end = _hex4(pattern, i + 2), i + 6
        # Java writes characters beyond U+FFFF as UTF-16 surrogate pairs: \uD800\uDC00.
        if 0xD800 <= code <= 0xDBFF and pattern.startswith("\\u", end):
            low = _hex4(pattern, end + 2)
            if 0xDC00 <= low <= 0xDFFF:
                code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                end += 6
        return f"\\U{code:08x}", end, False
    if letter == "z":  # Java's absolute end; Python 3.11 spells it \Z
        return r"\Z", i + 2, False
    return pattern[i : i + 2], i + 2, letter in "wWdDsS"


def _hex4(pattern: str, start: int) -> int:
    digits = pattern[start : start + 4]
    if len(digits) != 4:
        raise UntranslatablePattern(f"bad \\u escape at {start}")
    try:
        return int(digits, 16)
    except ValueError:
        raise UntranslatablePattern(f"bad \\u escape at {start}") from None


def _property_name(pattern: str, start: int) -> tuple[str, int]:
    if pattern[start : start + 1] == "{":
        end = pattern.find("}", start)
        if end < 0:
            raise UntranslatablePattern("unclosed \\p{")
        return pattern[start + 1 : end], end + 1
    if start < len(pattern):  # \pL: a one-letter name
        return pattern[start], start + 1
    raise UntranslatablePattern("\\p without a name")


def _property_items(name: str) -> str:
    """The items of a character class (no brackets) for Java's \\p{name}."""
    if name in _POSIX_SETS:
        return _POSIX_SETS[name]
    category = name.removeprefix("Is")  # Java accepts \p{IsL} for \p{L}
    if len(category) in (1, 2) and category in _category_names():
        return _category_items(category)
    raise UntranslatablePattern(f"\\p{{{name}}}")


@functools.cache
def _category_runs() -> tuple[tuple[int, int, str], ...]:
    """Every code point as runs of (first, last, Unicode general category)."""
    runs: list[tuple[int, int, str]] = []
    start, current = 0, unicodedata.category("\0")
    for code in range(1, sys.maxunicode + 1):
        category = unicodedata.category(chr(code))
        if category != current:
            runs.append((start, code - 1, current))
            start, current = code, category
    runs.append((start, sys.maxunicode, current))
    return tuple(runs)


@functools.cache
def _category_names() -> frozenset[str]:
    names = {category for _, _, category in _category_runs()}
    return frozenset(names | {name[0] for name in names})


@functools.cache
def _category_items(category: str) -> str:
    """Class items for a category ("Lu") or a group of them ("L"), adjacent runs merged."""
    merged: list[list[int]] = []
    for first, last, name in _category_runs():
        if not name.startswith(category):
            continue
        if merged and merged[-1][1] + 1 == first:
            merged[-1][1] = last
        else:
            merged.append([first, last])
    return "".join(
        f"\\U{first:08x}" if first == last else f"\\U{first:08x}-\\U{last:08x}"
        for first, last in merged
    )
