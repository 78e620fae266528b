"""Requests generated from the service model: whatever arrives, the server answers with an AWS
error or a result, never with a 5xx. CreateTrainingJob is fuzzed from a request that runs (a
real image, data in the embedded store), a few members at a time replaced by generated values,
so most examples get past validation to the capacity check and the job store, and many start a
job; every operation is also sent bodies with values no client sends spliced in anywhere (lone
surrogates, nesting deeper than any request, numbers JSON or Python cannot hold) and garbled
targets."""

from __future__ import annotations

import copy
import itertools
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from botocore.model import ListShape, MapShape, Shape, StructureShape
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from openmaker.shapes.model import operation_model
from openmaker.shapes.validate import compile_pattern
from tests.apiserver import ApiServer, signed_post, stop_all
from tests.helpers import make_image, request

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
# Now and then a member of the wrong kind, or the wrong document altogether.
GARBLED = st.one_of(
    REQUESTS.map(json.dumps),
    st.tuples(REQUESTS, st.text(max_size=10), ANY_JSON).map(
        lambda t: json.dumps({**t[0], **{k: t[2] for k in list(t[0])[:1]}, t[1]: t[2]})
    ),
    ANY_JSON.map(json.dumps),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
)
# Every AWS error a CreateTrainingJob may answer with, and what each one means it reached.
REACHED = {
    "SerializationException": "refused unread",
    "ValidationException": "refused by validation",
    "ResourceLimitExceeded": "refused by the capacity check",
    "ResourceInUse": "refused by the job store",
}

Path_ = tuple[str | int, ...]


def member_paths(shape: Shape, value: Any, path: Path_ = ()) -> Iterator[tuple[Path_, Shape]]:
    """Every member a request could replace: each member of every structure `value` holds
    (present or not), going into the first item of its lists."""
    if isinstance(shape, StructureShape) and isinstance(value, dict):
        for name, member in shape.members.items():
            yield (*path, name), member
            if name in value:
                yield from member_paths(member, value[name], (*path, name))
    elif isinstance(shape, ListShape) and isinstance(value, list) and value:
        yield from member_paths(shape.member, value[0], (*path, 0))


def replaced(body: dict[str, Any], edits: list[tuple[Path_, Any]]) -> dict[str, Any]:
    changed = copy.deepcopy(body)
    for path, value in edits:
        *parents, last = path
        target: Any = changed
        for step in parents:
            target = target[step]
        target[last] = value
    return changed


@dataclass
class Runnable:
    """A CreateTrainingJob request that runs to Completed, and the jobs made from it."""

    body: dict[str, Any]
    created: list[str] = field(default_factory=list)
    names: Iterator[int] = field(default_factory=itertools.count)

    def edited(self) -> st.SearchStrategy[tuple[dict[str, Any], list[Path_]]]:
        """The request under a fresh name, up to three of its members replaced: (the request,
        the paths replaced)."""
        paths = list(member_paths(INPUT, self.body))  # type: ignore[arg-type]
        # Members of different top-level members: an edit never replaces another one's parent.
        chosen = st.lists(st.sampled_from(paths), max_size=3, unique_by=lambda p: p[0][0])

        def edit(picked: list[tuple[Path_, Shape]]) -> st.SearchStrategy[Any]:
            values = st.tuples(*(strategy(shape, len(path)) for path, shape in picked))
            return values.map(lambda v: self._apply([p for p, _ in picked], list(v)))

        return chosen.flatmap(edit)

    def _apply(self, paths: list[Path_], values: list[Any]) -> tuple[dict[str, Any], list[Path_]]:
        body = dict(self.body, TrainingJobName=f"{self.body['TrainingJobName']}-{next(self.names)}")
        return replaced(body, list(zip(paths, values, strict=True))), paths


@pytest.fixture(scope="module")
def runnable(api_server: ApiServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runnable]:
    """A request that runs (its code exits at once) with one input channel; every job made
    from it is stopped, and waited for, at the end."""
    bucket = f"fuzz-{uuid.uuid4().hex[:8]}"
    s3, sagemaker = api_server.client("s3"), api_server.client("sagemaker")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="train/part-0", Body=b"1,2,3\n")
    image = make_image(tmp_path_factory.mktemp("fuzz-image"), "#!/bin/sh\nexit 0\n")
    body = request(
        f"fuzz-{uuid.uuid4().hex[:6]}", str(image), f"s3://{bucket}/out",
        {"train": f"s3://{bucket}/train/"},
    )  # fmt: skip
    found = Runnable(body)
    try:
        # The request as it is runs to the end: what the examples change is all that differs.
        sagemaker.create_training_job(**body)
        found.created.append(body["TrainingJobName"])
        waiter = sagemaker.get_waiter("training_job_completed_or_stopped")
        waiter.wait(TrainingJobName=body["TrainingJobName"], WaiterConfig={"Delay": 1})
        ran = sagemaker.describe_training_job(TrainingJobName=body["TrainingJobName"])
        assert ran["TrainingJobStatus"] == "Completed", ran.get("FailureReason")
        yield found
    finally:
        stop_all(sagemaker, found.created)


def names_a_member(message: str, paths: list[Path_]) -> bool:
    """Whether an error message names one of the members replaced (AWS writes member paths
    with a lower-case first letter in some messages: compared without case)."""
    lowered = message.lower()
    names = {str(step).lower() for path in paths for step in path if isinstance(step, str)}
    return any(name in lowered for name in names)


def test_create_training_job_from_a_runnable_request_never_answers_5xx(
    api_server: ApiServer, runnable: Runnable
) -> None:
    """Most examples get past validation; an answer is a job, or an AWS error naming a member
    that was replaced."""
    reached: Counter[str] = Counter()

    @settings(
        max_examples=80,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(example=runnable.edited())
    def post(example: tuple[dict[str, Any], list[Path_]]) -> None:
        body, paths = example
        status, answer = signed_post(
            api_server, "SageMaker.CreateTrainingJob", json.dumps(body).encode()
        )
        assert status < 500, answer
        if status == 200:
            runnable.created.append(body["TrainingJobName"])
            reached["created"] += 1
            event("created")
            return
        assert status == 400, answer
        assert answer["__type"] in REACHED, answer
        if answer["__type"] == "ResourceInUse":  # a generated name met a job made earlier
            assert body["TrainingJobName"] in answer["message"], answer
        else:
            assert names_a_member(answer["message"], paths), (paths, answer)
        reached[REACHED[answer["__type"]]] += 1
        event(f"{answer['__type']} {answer['message'][:60]}")

    post()
    examples = sum(reached.values())
    # About a third of the requests are left whole or changed in ways a job allows (measured:
    # 43 of 120): a fifth at least must have made a job.
    assert reached["created"] * 5 >= examples, reached


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(body=GARBLED)
def test_create_training_job_of_anything_never_answers_5xx(
    api_server: ApiServer, body: str
) -> None:
    status, answer = signed_post(api_server, "SageMaker.CreateTrainingJob", body.encode())
    assert status < 500, answer
    event(f"{status} {answer.get('__type', '')} {answer.get('message', '')[:40]}")
    # A wholly generated request that happens to be valid names an image that does not exist.
    assert status == 400, answer
    assert answer["__type"] in REACHED, answer
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
