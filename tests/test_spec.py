"""openmaker.shapes against the real botocore model: request checks, patterns, ARNs, names."""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.model import ListShape, MapShape, Shape, StructureShape

from openmaker.shapes.arn import resource_arn, training_job_arn
from openmaker.shapes.errors import ValidationException
from openmaker.shapes.model import _loader, operation_model, service_model, shape
from openmaker.shapes.names import unique_name
from openmaker.shapes.training import check_create_training_job, default_stopping_condition
from openmaker.shapes.validate import (
    compile_pattern,
    java_to_python,
    pattern_matches,
    validate_input,
    validate_output,
)

# What boto3 sends for a minimal CreateTrainingJob.
BASE: dict[str, Any] = {
    "TrainingJobName": "demo-1",
    "RoleArn": "arn:aws:iam::123456789012:role/SageMakerRole",
    "AlgorithmSpecification": {"TrainingImage": "/opt/images/byoc", "TrainingInputMode": "File"},
    "InputDataConfig": [
        {
            "ChannelName": "train",
            "DataSource": {
                "S3DataSource": {
                    "S3DataType": "S3Prefix",
                    "S3Uri": "s3://bucket/data/train",
                    "S3DataDistributionType": "FullyReplicated",
                }
            },
        }
    ],
    "OutputDataConfig": {"S3OutputPath": "s3://bucket/output"},
    "ResourceConfig": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 10},
    "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
    "HyperParameters": {"epochs": "3"},
}

Change = Callable[[dict[str, Any]], None]


def _parent(request: dict[str, Any], path: str) -> tuple[Any, str | int]:
    """The container holding the dotted `path` ("InputDataConfig.0.ChannelName"), and its key."""
    *steps, last = [int(step) if step.isdigit() else step for step in path.split(".")]
    node: Any = request
    for step in steps:
        node = node[step]
    return node, last


def put(path: str, value: Any) -> Change:
    def change(request: dict[str, Any]) -> None:
        node, key = _parent(request, path)
        node[key] = value

    return change


def drop(path: str) -> Change:
    def change(request: dict[str, Any]) -> None:
        node, key = _parent(request, path)
        del node[key]

    return change


def both(*changes: Change) -> Change:
    def change(request: dict[str, Any]) -> None:
        for each in changes:
            each(request)

    return change


def changed(change: Change) -> dict[str, Any]:
    request = copy.deepcopy(BASE)
    change(request)
    return request


def channel(name: str, **extra: Any) -> dict[str, Any]:
    return {**copy.deepcopy(BASE["InputDataConfig"][0]), "ChannelName": name, **extra}


S3_TYPE = "InputDataConfig.0.DataSource.S3DataSource.S3DataType"

# (change to the valid request, text the error message must contain: the member path)
INVALID: dict[str, tuple[Change, str]] = {
    "name-pattern": (put("TrainingJobName", "bad name"), "at 'TrainingJobName'"),
    "name-64-chars": (put("TrainingJobName", "a" * 64), "at 'TrainingJobName'"),
    "name-trailing-newline": (put("TrainingJobName", "demo-1\n"), "at 'TrainingJobName'"),
    "role-missing": (drop("RoleArn"), "Value null at 'RoleArn'"),
    "role-bad": (put("RoleArn", "arn:aws:iam::123:role/Role"), "at 'RoleArn'"),
    "role-non-ascii-digits": (
        put("RoleArn", "arn:aws:iam::١٢٣٤٥٦٧٨٩٠١٢:role/Role"),
        "at 'RoleArn'",
    ),
    "output-missing": (drop("OutputDataConfig"), "Value null at 'OutputDataConfig'"),
    "output-ftp": (
        put("OutputDataConfig.S3OutputPath", "ftp://bucket/output"),
        "at 'OutputDataConfig.S3OutputPath'",
    ),
    # Found by the API fuzz test: a 500 from the URI parser before this was checked.
    "output-unclosed-ipv6-host": (
        put("OutputDataConfig.S3OutputPath", "https://0["),
        "at 'OutputDataConfig.S3OutputPath' failed to satisfy constraint: Member must be a valid",
    ),
    "hyperparameters-101": (
        put("HyperParameters", {f"p{i}": "1" for i in range(101)}),
        "at 'HyperParameters'",
    ),
    "hyperparameter-value-2501": (
        put("HyperParameters.epochs", "3" * 2501),
        "at 'HyperParameters' failed to satisfy constraint: Map value must satisfy constraint: "
        "[Member must have length less than or equal to 2500]",
    ),
    "hyperparameter-key-257": (
        put("HyperParameters", {"k" * 257: "1"}),
        "at 'HyperParameters' failed to satisfy constraint: Map keys must satisfy constraint",
    ),
    "environment-key-dash": (
        put("Environment", {"MY-VAR": "1"}),
        "at 'Environment' failed to satisfy constraint: Map keys must satisfy constraint",
    ),
    "environment-value-513": (
        put("Environment", {"MY_VAR": "v" * 513}),
        "at 'Environment' failed to satisfy constraint: Map value must satisfy constraint",
    ),
    "channels-21": (
        put("InputDataConfig", [channel(f"c{i}") for i in range(21)]),
        "at 'InputDataConfig' failed to satisfy constraint: Member must have length less than",
    ),
    "channel-name-slash": (
        put("InputDataConfig.0.ChannelName", "tr/ain"),
        "at 'InputDataConfig.1.member.ChannelName'",
    ),
    "channel-s3uri": (
        put("InputDataConfig.0.DataSource.S3DataSource.S3Uri", "/data/train"),
        "at 'InputDataConfig.1.member.DataSource.S3DataSource.S3Uri'",
    ),
    "input-mode-enum": (
        put("AlgorithmSpecification.TrainingInputMode", "Turbo"),
        "at 'AlgorithmSpecification.TrainingInputMode' failed to satisfy constraint: "
        "Member must satisfy enum value set",
    ),
    "input-mode-missing": (
        drop("AlgorithmSpecification.TrainingInputMode"),
        "Value null at 'AlgorithmSpecification.TrainingInputMode'",
    ),
    "instance-type-enum": (
        put("ResourceConfig.InstanceType", "ml.fake.huge"),
        "at 'ResourceConfig.InstanceType'",
    ),
    "instance-count-0": (
        put("ResourceConfig.InstanceCount", 0),
        "at 'ResourceConfig.InstanceCount'",
    ),
    "volume-size-string": (
        put("ResourceConfig.VolumeSizeInGB", "10"),
        "at 'ResourceConfig.VolumeSizeInGB' failed to satisfy constraint: "
        "Member must be of type integer",
    ),
    "max-runtime-0": (
        put("StoppingCondition.MaxRuntimeInSeconds", 0),
        "at 'StoppingCondition.MaxRuntimeInSeconds'",
    ),
    "metric-definitions-41": (
        put(
            "AlgorithmSpecification.MetricDefinitions",
            [{"Name": f"m{i}", "Regex": "m=(.*)"} for i in range(41)],
        ),
        "at 'AlgorithmSpecification.MetricDefinitions'",
    ),
    "tag-key-hash": (
        put("Tags", [{"Key": "a#b", "Value": "x"}]),
        "at 'Tags.1.member.Key'",
    ),
    "unknown-top-level": (put("Bogus", 1), "Unknown parameter at 'Bogus'"),
    "unknown-nested": (
        put("AlgorithmSpecification.Bogus", 1),
        "Unknown parameter at 'AlgorithmSpecification.Bogus'",
    ),
    # openmaker's own rules (openmaker.shapes.training)
    "duplicate-channel": (
        put("InputDataConfig", [channel("train"), channel("train")]),
        "at 'InputDataConfig.2.member.ChannelName'",
    ),
    "channel-dot-dot": (
        put("InputDataConfig", [channel("train"), channel("..")]),
        "at 'InputDataConfig.2.member.ChannelName'",
    ),
    "channel-dot": (
        put("InputDataConfig", [channel(".")]),
        "at 'InputDataConfig.1.member.ChannelName'",
    ),
    "algorithm-name": (
        both(
            drop("AlgorithmSpecification.TrainingImage"),
            put("AlgorithmSpecification.AlgorithmName", "xgboost"),
        ),
        "at 'AlgorithmSpecification.AlgorithmName'",
    ),
    "training-image-missing": (
        drop("AlgorithmSpecification.TrainingImage"),
        "Value null at 'AlgorithmSpecification.TrainingImage'",
    ),
    "algorithm-spec-missing": (
        drop("AlgorithmSpecification"),
        "Value null at 'AlgorithmSpecification'",
    ),
    "resource-config-missing": (drop("ResourceConfig"), "Value null at 'ResourceConfig'"),
    "instance-type-missing": (
        drop("ResourceConfig.InstanceType"),
        "Value null at 'ResourceConfig.InstanceType'",
    ),
    "instance-groups": (
        put(
            "ResourceConfig.InstanceGroups",
            [{"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "InstanceGroupName": "g"}],
        ),
        "at 'ResourceConfig.InstanceGroups'",
    ),
    "gzip-with-file": (
        put("InputDataConfig.0.CompressionType", "Gzip"),
        "at 'InputDataConfig.1.member.CompressionType'",
    ),
    "fastfile-with-manifest": (
        both(
            put("AlgorithmSpecification.TrainingInputMode", "FastFile"),
            put(S3_TYPE, "ManifestFile"),
        ),
        "at 'InputDataConfig.1.member.DataSource.S3DataSource.S3DataType'",
    ),
    "checkpoint-local-path-dot-dot": (
        put("CheckpointConfig", {"S3Uri": "s3://b/ckpt", "LocalPath": "/opt/ml/../../etc/cron.d"}),
        "at 'CheckpointConfig.LocalPath'",
    ),
    "checkpoint-local-path-relative": (
        put("CheckpointConfig", {"S3Uri": "s3://b/ckpt", "LocalPath": "checkpoints"}),
        "at 'CheckpointConfig.LocalPath'",
    ),
    "checkpoint-local-path-proc": (
        put("CheckpointConfig", {"S3Uri": "s3://b/ckpt", "LocalPath": "/proc/self"}),
        "at 'CheckpointConfig.LocalPath'",
    ),
    "file-system-source": (
        put(
            "InputDataConfig.0.DataSource",
            {
                "FileSystemDataSource": {
                    "FileSystemId": "fs-0123456789abcdef0",
                    "FileSystemAccessMode": "ro",
                    "FileSystemType": "EFS",
                    "DirectoryPath": "/data",
                }
            },
        ),
        "at 'InputDataConfig.1.member.DataSource.FileSystemDataSource'",
    ),
}


@pytest.mark.parametrize(("change", "expected"), INVALID.values(), ids=INVALID.keys())
def test_invalid_request_names_the_member(change: Change, expected: str) -> None:
    with pytest.raises(ValidationException) as caught:
        check_create_training_job(changed(change))
    message = caught.value.message
    assert caught.value.code == "ValidationException"
    assert re.match(r"\d+ validation errors? detected: ", message), message
    assert expected in message


def test_valid_base_request_passes() -> None:
    request = copy.deepcopy(BASE)
    check_create_training_job(request)
    assert request == BASE  # checking never changes the request


def test_one_error_is_singular() -> None:
    with pytest.raises(ValidationException) as caught:
        validate_input("CreateTrainingJob", changed(put("TrainingJobName", "bad name")))
    assert caught.value.message == (
        "1 validation error detected: Value 'bad name' at 'TrainingJobName' failed to satisfy "
        "constraint: Member must satisfy regular expression pattern: "
        + shape("TrainingJobName").metadata["pattern"]
    )


def test_all_errors_are_counted_in_one_message() -> None:
    request = changed(
        both(
            put("TrainingJobName", "bad name"),
            drop("RoleArn"),
            put("ResourceConfig.VolumeSizeInGB", "10"),
            put("Bogus", True),
        )
    )
    with pytest.raises(ValidationException) as caught:
        check_create_training_job(request)
    message = caught.value.message
    assert message.startswith("4 validation errors detected: ")
    assert message.count("; ") == 3
    for path in ("TrainingJobName", "RoleArn", "ResourceConfig.VolumeSizeInGB", "Bogus"):
        assert f"at '{path}'" in message


def test_long_values_are_cut_in_messages() -> None:
    with pytest.raises(ValidationException) as caught:
        validate_input("CreateTrainingJob", changed(put("TrainingJobName", "a" * 5000)))
    assert len(caught.value.message) < 1000


def test_channel_input_mode_overrides_the_job_mode() -> None:
    pipe_channel = put("InputDataConfig.0.InputMode", "Pipe")
    check_create_training_job(
        changed(both(pipe_channel, put("InputDataConfig.0.CompressionType", "Gzip")))
    )
    file_channel_in_pipe_job = both(
        put("AlgorithmSpecification.TrainingInputMode", "Pipe"),
        put("InputDataConfig.0.InputMode", "File"),
        put("InputDataConfig.0.CompressionType", "Gzip"),
    )
    with pytest.raises(ValidationException, match="CompressionType"):
        check_create_training_job(changed(file_channel_in_pipe_job))


def test_a_request_without_an_input_mode_is_told_only_that() -> None:
    gzip_without_mode = both(
        drop("AlgorithmSpecification"), put("InputDataConfig.0.CompressionType", "Gzip")
    )
    with pytest.raises(ValidationException) as caught:
        check_create_training_job(changed(gzip_without_mode))
    assert "Value null at 'AlgorithmSpecification'" in caught.value.message
    assert "None" not in caught.value.message


def test_fastfile_with_s3_prefix_passes() -> None:
    check_create_training_job(changed(put("InputDataConfig.0.InputMode", "FastFile")))
    with pytest.raises(ValidationException, match="S3DataType"):
        check_create_training_job(
            changed(
                both(put("InputDataConfig.0.InputMode", "FastFile"), put(S3_TYPE, "ManifestFile"))
            )
        )


ATTRIBUTES = "InputDataConfig.0.DataSource.S3DataSource.AttributeNames"
CHANNEL_MODE = "InputDataConfig.0.InputMode"


@pytest.mark.parametrize(
    ("change", "member", "why"),
    [
        (
            both(put(CHANNEL_MODE, "FastFile"), put(S3_TYPE, "AugmentedManifestFile"),
                 put(ATTRIBUTES, ["source-ref"])),
            "S3DataType", "FastFile input mode is allowed only with S3DataType S3Prefix",
        ),
        (
            both(put(S3_TYPE, "AugmentedManifestFile"), put(ATTRIBUTES, ["source-ref"])),
            "S3DataType", "AugmentedManifestFile can only be used with Pipe input mode, not File",
        ),
        (
            both(put(CHANNEL_MODE, "Pipe"), put(S3_TYPE, "AugmentedManifestFile")),
            "AttributeNames", "Value null",
        ),
        (
            put("InputDataConfig.0.RecordWrapperType", "RecordIO"),
            "RecordWrapperType", "allowed only with Pipe input mode, not File",
        ),
        (
            both(put(CHANNEL_MODE, "FastFile"), put("InputDataConfig.0.CompressionType", "Gzip")),
            "CompressionType", "allowed only with Pipe input mode, not FastFile",
        ),
        (
            # The job says Pipe, the channel's own File wins.
            both(put("AlgorithmSpecification.TrainingInputMode", "Pipe"),
                 put(CHANNEL_MODE, "File"), put("InputDataConfig.0.RecordWrapperType", "RecordIO")),
            "RecordWrapperType", "not File",
        ),
    ],
)  # fmt: skip
def test_input_mode_combinations_sagemaker_refuses(change: Change, member: str, why: str) -> None:
    with pytest.raises(ValidationException) as caught:
        check_create_training_job(changed(change))
    assert re.search(rf"at 'InputDataConfig\.1\.member\.[\w.]*{member}'", caught.value.message)
    assert why in caught.value.message


def test_pipe_accepts_every_data_type_and_wrapper() -> None:
    pipe = put(CHANNEL_MODE, "Pipe")
    for data_type in ("S3Prefix", "ManifestFile"):
        check_create_training_job(
            changed(both(pipe, put(S3_TYPE, data_type),
                         put("InputDataConfig.0.RecordWrapperType", "RecordIO")))
        )  # fmt: skip
    check_create_training_job(
        changed(both(pipe, put(S3_TYPE, "AugmentedManifestFile"), put(ATTRIBUTES, ["a", "b-ref"])))
    )


def test_default_stopping_condition_is_valid() -> None:
    assert default_stopping_condition() == {"MaxRuntimeInSeconds": 86400}
    check_create_training_job(changed(put("StoppingCondition", default_stopping_condition())))


def test_training_image_accepts_a_local_folder() -> None:
    # The model's AlgorithmImage is ".*" up to 255 characters: a local path is fine, and the
    # checks of that member still run on it (its length).
    image = "AlgorithmSpecification.TrainingImage"
    for folder in ("/opt/images/byoc", "/home/me/my trainer/v2"):
        check_create_training_job(changed(put(image, folder)))
    with pytest.raises(ValidationException, match=f"at '{image}'"):
        check_create_training_job(changed(put(image, "/" + "x" * 255)))


# --- patterns --------------------------------------------------------------------------------


def _reachable_patterns(root: Shape) -> dict[str, str]:
    """Shape name -> pattern for every string shape reachable from `root`."""
    found: dict[str, str] = {}
    seen: set[str] = set()
    stack = [root]
    while stack:
        current = stack.pop()
        if current.name in seen:
            continue
        seen.add(current.name)
        if "pattern" in current.metadata:
            found[current.name] = current.metadata["pattern"]
        if isinstance(current, StructureShape):
            stack.extend(current.members.values())
        elif isinstance(current, ListShape):
            stack.append(current.member)
        elif isinstance(current, MapShape):
            stack.extend((current.key, current.value))
    return found


def test_every_pattern_of_create_training_job_compiles() -> None:
    root = operation_model("CreateTrainingJob").input_shape
    assert root is not None
    patterns = _reachable_patterns(root)
    assert len(patterns) > 30
    # Some of these use Java-only syntax (\p{L}, \p{Alnum}): they must be translated, not skipped.
    assert any("\\p{" in pattern for pattern in patterns.values())
    untranslated = {name: p for name, p in patterns.items() if compile_pattern(p) is None}
    assert untranslated == {}


@pytest.mark.parametrize("service", ["sagemaker", "sagemaker-runtime", "logs"])
def test_every_pattern_of_the_services_compiles(service: str) -> None:
    shapes = _loader().load_service_model(service, "service-2")["shapes"]
    patterns = {name: s["pattern"] for name, s in shapes.items() if "pattern" in s}
    assert {name: p for name, p in patterns.items() if compile_pattern(p) is None} == {}


@pytest.mark.parametrize(
    ("pattern", "value", "matches"),
    [
        ("[a-z]+", "abc1", False),  # the whole value must match
        ("[a-z]+", "abc", True),
        (r"([\p{L}\p{Z}\p{N}_.:/=+\-@]*)", "Name é 1", True),
        (r"([\p{L}\p{Z}\p{N}_.:/=+\-@]*)", "a#b", False),
        (r"arn:[\p{Alnum}\-]+:lambda", "arn:aws-cn:lambda", True),
        (r"arn:[\p{Alnum}\-]+:lambda", "arn:awsé:lambda", False),  # POSIX classes are ASCII
        (r"\d{3}", "١٢٣", False),  # Java's \d is ASCII
        (r"[\u0020-\uD7FF\uE000-\uFFFD\uD800\uDC00-\uDBFF\uDFFF\t]*", "ok 😀\t", True),
        (r"[\u0020-\uD7FF\uE000-\uFFFD\uD800\uDC00-\uDBFF\uDFFF\t]*", "bell\x07", False),
        (r"([\p{L}]*)${1,128}", "abc", True),  # a quantified anchor
        (r"[\w-_]*", "a-_b", True),  # "-" after \w is a literal
        (r"\A\S[\p{Print}]*\z", "id 1", True),
        (r"\A\S[\p{Print}]*\z", "id\n", False),
        (".*", "a\rb", False),  # Java's "." stops at \r too
    ],
)
def test_java_patterns(pattern: str, value: str, matches: bool) -> None:
    assert compile_pattern(pattern) is not None, java_to_python(pattern)
    assert pattern_matches(pattern, value) is matches


def test_an_untranslatable_pattern_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="openmaker.shapes.validate"):
        assert compile_pattern(r"\p{InGreek}+") is None
    assert "InGreek" in caplog.text
    assert pattern_matches(r"\p{InGreek}+", "anything")  # only that check is dropped


# --- names and ARNs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "base", ["demo", "my_job name!!", "-x-", "", "___", "a" * 100, "Ü-train", "x" * 38 + "--y"]
)
def test_unique_name_is_a_valid_job_name(base: str) -> None:
    job_name = shape("TrainingJobName")
    name = unique_name(base)
    assert len(name) <= job_name.metadata["max"]
    assert pattern_matches(job_name.metadata["pattern"], name), name
    assert re.search(r"\d{4}(-\d{2}){5}-\d{3}$", name), name


def test_unique_name_keeps_the_base_and_the_time() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    name = unique_name("my_job")
    assert name.startswith("my-job-")
    stamp = datetime.strptime(name.removeprefix("my-job-"), "%Y-%m-%d-%H-%M-%S-%f")
    assert stamp.replace(tzinfo=UTC) >= before
    long_name = unique_name("b" * 100)
    assert len(long_name) == shape("TrainingJobName").metadata["max"]
    assert long_name.startswith("b" * 39 + "-")


def test_training_job_arn() -> None:
    arn = training_job_arn("Demo-1", "us-east-1", "123456789012")
    assert arn == "arn:aws:sagemaker:us-east-1:123456789012:training-job/demo-1"
    output = operation_model("DescribeTrainingJob").output_shape
    assert output is not None
    arn_shape = output.members["TrainingJobArn"]
    assert pattern_matches(arn_shape.metadata["pattern"], arn)
    assert resource_arn("endpoint", "My-Ep", "eu-west-1", "000000000000") == (
        "arn:aws:sagemaker:eu-west-1:000000000000:endpoint/my-ep"
    )


# --- responses and models --------------------------------------------------------------------


def _describe_response() -> dict[str, Any]:
    return {
        "TrainingJobName": "demo-1",
        "TrainingJobArn": training_job_arn("demo-1", "us-east-1", "123456789012"),
        "ModelArtifacts": {"S3ModelArtifacts": "s3://bucket/output/demo-1/output/model.tar.gz"},
        "TrainingJobStatus": "Completed",
        "SecondaryStatus": "Completed",
        "AlgorithmSpecification": BASE["AlgorithmSpecification"],
        "RoleArn": BASE["RoleArn"],
        "InputDataConfig": BASE["InputDataConfig"],
        "OutputDataConfig": BASE["OutputDataConfig"],
        "ResourceConfig": BASE["ResourceConfig"],
        "StoppingCondition": BASE["StoppingCondition"],
        "HyperParameters": BASE["HyperParameters"],
        "CreationTime": datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        "TrainingStartTime": datetime(2024, 5, 1, 12, 1, tzinfo=UTC),
        "TrainingEndTime": datetime(2024, 5, 1, 12, 5, tzinfo=UTC),
        "SecondaryStatusTransitions": [
            {
                "Status": "Training",
                "StartTime": datetime(2024, 5, 1, 12, 1, tzinfo=UTC),
                "StatusMessage": "Training image download completed.",
            }
        ],
        "FinalMetricDataList": [
            {"MetricName": "loss", "Value": 0.25, "Timestamp": datetime(2024, 5, 1, tzinfo=UTC)}
        ],
    }


def test_validate_output_accepts_a_valid_describe() -> None:
    assert validate_output("DescribeTrainingJob", _describe_response()) == []


def test_validate_output_reports_each_problem() -> None:
    response = _describe_response()
    del response["TrainingJobStatus"]
    response["CreationTime"] = "yesterday"
    response["SecondaryStatus"] = "Sleeping"
    problems = validate_output("DescribeTrainingJob", response)
    assert len(problems) == 3, problems
    assert any("Value null at 'TrainingJobStatus'" in p for p in problems)
    assert any("at 'CreationTime'" in p and "type timestamp" in p for p in problems)
    assert any("at 'SecondaryStatus'" in p and "enum" in p for p in problems)


def test_models_load_once_for_any_service() -> None:
    assert service_model() is service_model("sagemaker") is service_model(name="sagemaker")
    assert operation_model("CreateTrainingJob") is operation_model("CreateTrainingJob")
    assert operation_model("InvokeEndpoint", "sagemaker-runtime").name == "InvokeEndpoint"
    assert service_model("logs").service_name == "logs"
    with pytest.raises(ValidationException, match="logGroupName"):
        validate_input("CreateLogGroup", {}, service="logs")
