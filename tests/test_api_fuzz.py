"""CreateTrainingJob requests generated from the service model: whatever arrives, the server
answers with an AWS error or a job, never with a 5xx."""

from __future__ import annotations

import json
from typing import Any

from botocore.model import Shape
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
    if shape.enum:
        return st.sampled_from(shape.enum)
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
    if kind == "structure":
        members = shape.members  # type: ignore[attr-defined]
        required = set(shape.required_members)  # type: ignore[attr-defined]
        return st.fixed_dictionaries(
            {name: strategy(members[name], depth + 1) for name in required},
            optional={
                name: strategy(m, depth + 1) for name, m in members.items() if name not in required
            },
        )
    if kind == "list":
        return st.lists(strategy(shape.member, depth + 1), max_size=3)  # type: ignore[attr-defined]
    if kind == "map":
        return st.dictionaries(
            _string(shape.key),  # type: ignore[attr-defined]
            strategy(shape.value, depth + 1),  # type: ignore[attr-defined]
            max_size=3,
        )
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
