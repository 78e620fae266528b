"""Requests generated from the service model: whatever arrives, the server answers with an AWS
error or a result, never with a 5xx. CreateTrainingJob is fuzzed on its own (its requests get
far, to the job store); every operation is also sent bodies with values no client sends spliced
in anywhere (lone surrogates, nesting deeper than any request, numbers JSON or Python cannot
hold) and garbled targets."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from botocore.model import ListShape, MapShape, Shape, StructureShape
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from openmaker.spec import operation_model
from openmaker.spec.validate import compile_pattern
from tests.apiserver import ApiServer, signed_post
from tests.helpers import request

# What a member may hold when the generator goes off the model: any JSON value.
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)


def _string(shape: Shape) -> st.SearchStrategy[Any]:
    if enum := shape.metadata.get("enum"):
        return st.sampled_from(enum)
    low = shape.metadata.get("min", 0)
    high = min(shape.metadata.get("max", 64), 64)
    plain = st.text(min_size=min(low, high), max_size=high)
    pattern = shape.metadata.get("pattern")
    compiled = compile_pattern(pattern) if pattern else None
    if compiled is None:
        return plain
    # Values the pattern accepts, most of the time: they get past validation further in.
    matching = st.from_regex(compiled, fullmatch=True)
    return st.one_of(matching, matching, plain)


def strategy(shape: Shape, depth: int = 0) -> st.SearchStrategy[Any]:
    kind = shape.type_name
    if depth > 6:
        return st.just({}) if kind == "structure" else ANY_JSON
    if isinstance(shape, StructureShape):
        members = shape.members
        required = set(shape.required_members)
        return st.fixed_dictionaries(
            {name: strategy(members[name], depth + 1) for name in required},
            optional={
                name: strategy(m, depth + 1) for name, m in members.items() if name not in required
            },
        )
    if isinstance(shape, ListShape):
        return st.lists(strategy(shape.member, depth + 1), max_size=3)
    if isinstance(shape, MapShape):
        return st.dictionaries(_string(shape.key), strategy(shape.value, depth + 1), max_size=3)
    if kind == "string":
        return _string(shape)
    if kind in ("integer", "long"):
        return st.integers(
            min_value=shape.metadata.get("min", -(2**31)),
            max_value=shape.metadata.get("max", 2**31),
        )
    if kind in ("float", "double"):
        return st.floats(allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "timestamp":
        return st.integers(min_value=0, max_value=2**33)
    return ANY_JSON


INPUT = operation_model("CreateTrainingJob").input_shape
assert INPUT is not None
REQUESTS = strategy(INPUT)
# A request openmaker would run, with a few members replaced by generated ones: these get past
# the model's checks to the rules across members and to the job store.
VALID = request(
    "fuzz", "/nonexistent/image", "s3://fuzz-bucket/out", {"train": "s3://fuzz-bucket/d"}
)
EDITED = st.fixed_dictionaries(
    {}, optional={name: strategy(member, 1) for name, member in INPUT.members.items()}
).map(lambda changes: {**VALID, **changes})
# Now and then a member of the wrong kind, or the wrong document altogether.
BODIES = st.one_of(
    EDITED.map(json.dumps),
    REQUESTS.map(json.dumps),
    st.tuples(REQUESTS, st.text(max_size=10), ANY_JSON).map(
        lambda t: json.dumps({**t[0], **{k: t[2] for k in list(t[0])[:1]}, t[1]: t[2]})
    ),
    ANY_JSON.map(json.dumps),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(body=BODIES)
def test_create_training_job_never_answers_5xx(api_server: ApiServer, body: str) -> None:
    status, answer = signed_post(api_server, "SageMaker.CreateTrainingJob", body.encode())
    assert status < 500, answer
    event(f"{status} {answer.get('__type', '')} {answer.get('message', '')[:40]}")
    if status != 200:
        assert answer["__type"] in {
            "ValidationException",
            "SerializationException",
            "ResourceInUse",
            "ResourceLimitExceeded",
        }, answer
        assert answer["message"]


# --- Every operation, with hostile values spliced in -------------------------------------------

OPERATIONS = [
    ("SageMaker", "sagemaker", name)
    for name in (
        "CreateTrainingJob",
        "DescribeTrainingJob",
        "ListTrainingJobs",
        "StopTrainingJob",
        "AddTags",
        "ListTags",
        "DeleteTags",
    )
] + [
    ("Logs_20140328", "logs", name)
    for name in ("DescribeLogGroups", "DescribeLogStreams", "GetLogEvents", "FilterLogEvents")
]


@dataclass(frozen=True)
class Raw:
    """JSON text written into the body as it is: what `json.dumps` will not write."""

    text: str


SURROGATE = st.integers(min_value=0xD800, max_value=0xDFFF).map(chr)
# Each of these makes any request unreadable: the answer must be a 400.
UNREADABLE = st.one_of(
    st.tuples(st.text(max_size=4), SURROGATE, st.text(max_size=4)).map("".join),
    st.integers(min_value=33, max_value=20_000).map(lambda n: Raw("[" * n + "]" * n)),
    st.integers(min_value=33, max_value=2_000).map(lambda n: Raw('{"a":' * n + "1" + "}" * n)),
    st.sampled_from(["1e400", "-1e400", "1E999", "NaN", "Infinity", "-Infinity"]).map(Raw),
    st.integers(min_value=4_301, max_value=6_000).map(lambda n: Raw("9" * n)),
)
# Beyond any integer or long member; a double member may still take them.
HUGE = st.integers(min_value=2**63) | st.integers(max_value=-(2**63) - 1)
# A target header as a client could garble it (printable ASCII: what HTTP carries).
TARGETS = st.one_of(
    st.sampled_from([f"{prefix}.{name}" for prefix, _, name in OPERATIONS]),
    st.from_regex(r"[ -~]{0,40}", fullmatch=True),
    st.sampled_from(["", ".", "SageMaker", "SageMaker.", "Logs_20140328.", ".ListTags"]),
)


def splice(body: Any, value: Any, choices: st.DataObject) -> Any:
    """`body` with `value` put in one of its objects or lists (or as a member name)."""
    containers: list[Any] = []
    pending = [body]
    while pending:
        item = pending.pop()
        if isinstance(item, dict | list):
            containers.append(item)
            pending.extend(item.values() if isinstance(item, dict) else item)
    target = choices.draw(st.sampled_from(containers), label="where")
    if isinstance(target, list):
        target.append(value)
    elif isinstance(value, str) and choices.draw(st.booleans(), label="as a name"):
        target[value] = 1
    else:
        name = choices.draw(st.sampled_from([*target, "Extra"]), label="member")
        target[name] = value
    return body


def dumps(body: Any) -> bytes:
    """JSON as a client writes it (escaping lone surrogates), with `Raw` text as it is."""
    raws: list[str] = []

    def placeholder(value: Any) -> str:
        if not isinstance(value, Raw):
            raise TypeError(type(value))
        raws.append(value.text)
        return f"@@raw{len(raws) - 1}@@"

    text = json.dumps(body, default=placeholder)
    for index, raw in enumerate(raws):
        text = text.replace(f'"@@raw{index}@@"', raw, 1)
    return text.encode()


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(operation=st.sampled_from(OPERATIONS), choices=st.data())
def test_hostile_values_in_any_operation_are_refused_with_4xx(
    api_server: ApiServer, operation: tuple[str, str, str], choices: st.DataObject
) -> None:
    prefix, service, name = operation
    shape = operation_model(name, service).input_shape
    assert shape is not None
    body = choices.draw(strategy(shape), label="body")
    # A CreateTrainingJob the generator made valid would start a job: keep those unreadable.
    unreadable = name == "CreateTrainingJob" or choices.draw(st.booleans(), label="unreadable")
    value = choices.draw(UNREADABLE if unreadable else HUGE, label="value")
    status, answer = signed_post(
        api_server, f"{prefix}.{name}", dumps(splice(body, value, choices))
    )
    event(f"{name} {status} {answer.get('__type', '')}")
    assert status < 500, answer
    if unreadable:
        assert status == 400 and answer["__type"] == "SerializationException", answer
        assert answer["message"]


@settings(max_examples=100, deadline=None)
@given(target=TARGETS, body=ANY_JSON.map(json.dumps))
def test_any_target_and_document_never_answer_5xx(
    api_server: ApiServer, target: str, body: str
) -> None:
    status, answer = signed_post(api_server, target, body.encode())
    event(f"{status} {answer.get('__type', '')}")
    assert status < 500, answer
