"""Paging as the model declares it: boto3's paginators (which read paginators-1.json) walk every
listing openmaker serves, and a token is good only for the operation and query it came from."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from openmaker.jobs.logs import LOG_GROUP
from openmaker.shapes.model import operation_model
from openmaker.shapes.paging import paginator
from tests.apiserver import ApiServer, stop_all
from tests.helpers import make_image, request

PAGED = [
    ("sagemaker", "ListTrainingJobs"),
    ("sagemaker", "Search"),
    ("sagemaker", "ListTags"),
    ("logs", "DescribeLogStreams"),
    ("logs", "FilterLogEvents"),
]


@pytest.mark.parametrize(("service", "operation"), PAGED)
def test_the_token_and_limit_members_are_the_models(service: str, operation: str) -> None:
    pages = paginator(operation, service)
    model = operation_model(operation, service)
    assert model.input_shape is not None and model.output_shape is not None
    assert pages.input_token in model.input_shape.members
    assert pages.limit_key in model.input_shape.members
    assert pages.output_token in model.output_shape.members


@pytest.fixture(scope="module")
def two_jobs(api_server: ApiServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Two ended jobs whose names share a prefix, each with a log stream of three lines, and
    five tags on the first."""
    sagemaker = api_server.client("sagemaker")
    prefix = f"paged-{uuid.uuid4().hex[:8]}"
    image = make_image(tmp_path_factory.mktemp("image"), "#!/bin/sh\necho a\necho b\necho c\n")
    api_server.client("s3").create_bucket(Bucket=prefix)
    names = [f"{prefix}-{n}" for n in (1, 2)]
    try:
        for name in names:
            body = request(name, str(image), f"s3://{prefix}/out")
            body["Tags"] = [{"Key": f"k{i}", "Value": str(i)} for i in range(5)]
            sagemaker.create_training_job(**body)
        waiter = sagemaker.get_waiter("training_job_completed_or_stopped")
        for name in names:
            waiter.wait(TrainingJobName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
        yield prefix
    finally:
        stop_all(sagemaker, names)


def _walk(client: Any, method: str, key: str, **params: Any) -> list[Any]:
    pages = client.get_paginator(method).paginate(**params, PaginationConfig={"PageSize": 1})
    return [item for page in pages for item in page[key]]


def test_boto3_paginators_walk_every_listing(api_server: ApiServer, two_jobs: str) -> None:
    sagemaker, logs = api_server.client("sagemaker"), api_server.client("logs")
    listed = _walk(sagemaker, "list_training_jobs", "TrainingJobSummaries", NameContains=two_jobs)
    assert [j["TrainingJobName"] for j in listed] == [f"{two_jobs}-1", f"{two_jobs}-2"]
    expression = {"Filters": [{"Name": "TrainingJobName", "Operator": "Contains",
                               "Value": two_jobs}]}  # fmt: skip
    found = _walk(sagemaker, "search", "Results", Resource="TrainingJob",
                  SearchExpression=expression)  # fmt: skip
    assert len(found) == 2
    # ListTags pages by at least 50, as many tags as a resource can have: one page.
    tags = sagemaker.get_paginator("list_tags").paginate(ResourceArn=listed[0]["TrainingJobArn"])
    assert [t["Key"] for page in tags for t in page["Tags"]] == [f"k{i}" for i in range(5)]
    streams = _walk(logs, "describe_log_streams", "logStreams", logGroupName=LOG_GROUP,
                    logStreamNamePrefix=two_jobs)  # fmt: skip
    assert len(streams) == 2
    events = _walk(logs, "filter_log_events", "events", logGroupName=LOG_GROUP,
                   logStreamNamePrefix=two_jobs)  # fmt: skip
    assert [e["message"] for e in events if e["message"] in "abc"] == list("abcabc")


def test_a_token_is_good_for_its_own_operation_and_query_only(
    api_server: ApiServer, two_jobs: str
) -> None:
    sagemaker, logs = api_server.client("sagemaker"), api_server.client("logs")
    first = sagemaker.list_training_jobs(NameContains=two_jobs, MaxResults=1)
    token = first["NextToken"]
    assert sagemaker.list_training_jobs(NameContains=two_jobs, MaxResults=1, NextToken=token)
    arn = first["TrainingJobSummaries"][0]["TrainingJobArn"]
    refused: list[tuple[str, dict[str, Any]]] = [
        ("search", {"Resource": "TrainingJob"}),
        ("list_training_jobs", {"SortBy": "Name"}),
        ("list_tags", {"ResourceArn": arn}),
    ]
    for method, params in refused:
        with pytest.raises(ClientError) as caught:
            getattr(sagemaker, method)(**params, NextToken=token)
        assert caught.value.response["Error"]["Code"] == "ValidationException"
    streams = logs.describe_log_streams(
        logGroupName=LOG_GROUP, logStreamNamePrefix=two_jobs, limit=1
    )
    with pytest.raises(ClientError) as caught:
        logs.filter_log_events(logGroupName=LOG_GROUP, nextToken=streams["nextToken"])
    assert caught.value.response["Error"]["Code"] == "InvalidParameterException"


def test_tokens_do_not_say_how_they_are_made(tmp_path: Path) -> None:
    """Opaque to clients: no row id or offset in plain sight (clients must not build them)."""
    from openmaker.shapes.paging import encode

    token = encode("GetLogEvents", {"after": 12345})
    assert "12345" not in token and "/" not in token
