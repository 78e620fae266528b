"""Search (resource TrainingJob) and UpdateTrainingJob through boto3 against `openmaker server`."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from openmaker.shapes.validate import validate_output
from tests.apiserver import ApiServer
from tests.helpers import make_image, request
from tests.test_api_clients import new_bucket


def _run_jobs(server: ApiServer, tmp_path: Path, prefix: str, count: int) -> list[str]:
    sagemaker = server.client("sagemaker")
    image = make_image(tmp_path / "image", "#!/bin/sh\necho searched\n")
    output = f"s3://{new_bucket(server)}/out"
    names = [f"{prefix}-{i}" for i in range(count)]
    for i, name in enumerate(names):
        body = request(name, str(image), output, Tags=[{"Key": "team", "Value": f"t{i % 2}"}])
        body["HyperParameters"] = {"lr": str(i)}
        sagemaker.create_training_job(**body)
    waiter = sagemaker.get_waiter("training_job_completed_or_stopped")
    for name in names:
        waiter.wait(TrainingJobName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    return names


def _search(server: ApiServer, **params: Any) -> dict[str, Any]:
    found: dict[str, Any] = server.client("sagemaker").search(Resource="TrainingJob", **params)
    found.pop("ResponseMetadata")
    assert validate_output("Search", found) == []
    return found


def _names(found: dict[str, Any]) -> list[str]:
    return [r["TrainingJob"]["TrainingJobName"] for r in found["Results"]]


def test_search_filters_sorts_and_pages(api_server: ApiServer, tmp_path: Path) -> None:
    prefix = f"srch-{uuid.uuid4().hex[:6]}"
    names = _run_jobs(api_server, tmp_path, prefix, 3)
    mine = {"Name": "TrainingJobName", "Operator": "Contains", "Value": prefix}
    found = _search(
        api_server,
        SearchExpression={"Filters": [mine]},
        SortBy="TrainingJobName",
        SortOrder="Ascending",
    )
    assert _names(found) == names
    assert found["TotalHits"] == {"Value": 3, "Relation": "EqualTo"}
    record = found["Results"][0]["TrainingJob"]
    assert record["Tags"] == [{"Key": "team", "Value": "t0"}]
    assert record["OutputDataConfig"]["KmsKeyId"] == ""

    by_tag = {"Filters": [mine, {"Name": "Tags.team", "Operator": "Equals", "Value": "t1"}]}
    assert _names(_search(api_server, SearchExpression=by_tag)) == [names[1]]
    numbers = {"Filters": [mine, {"Name": "HyperParameters.lr", "Operator": "In", "Value": "0,2"}]}
    assert sorted(_names(_search(api_server, SearchExpression=numbers))) == [names[0], names[2]]
    status = {"Filters": [mine, {"Name": "TrainingJobStatus", "Value": "Failed"}]}
    assert _names(_search(api_server, SearchExpression=status)) == []
    created = found["Results"][1]["TrainingJob"]["CreationTime"]
    later = {
        "Filters": [
            mine,
            {"Name": "CreationTime", "Operator": "GreaterThan", "Value": created.isoformat()},
        ]
    }
    assert _names(_search(api_server, SearchExpression=later)) == [names[2]]
    either = {
        "Operator": "Or",
        "SubExpressions": [
            {"Filters": [{"Name": "TrainingJobName", "Value": names[0]}]},
            {"Filters": [{"Name": "TrainingJobName", "Value": names[2]}]},
        ],
    }
    assert sorted(_names(_search(api_server, SearchExpression=either))) == [names[0], names[2]]

    # Pages: newest first, every job once. (By creation: the default order, LastModifiedTime,
    # moves as the jobs run.)
    paged, token = [], None
    while True:
        extra: dict[str, str] = {"NextToken": token} if token else {}
        page = _search(
            api_server,
            SearchExpression={"Filters": [mine]},
            SortBy="CreationTime",
            MaxResults=2,
            **extra,
        )
        paged += _names(page)
        token = page.get("NextToken")
        if not token:
            break
    assert paged == list(reversed(names))


def test_search_refuses_what_aws_refuses(api_server: ApiServer) -> None:
    sagemaker = api_server.client("sagemaker")
    two = [
        {"Name": "TrainingJobName", "Operator": "Contains", "Value": "a"},
        {"Name": "TrainingJobName", "Operator": "Contains", "Value": "b"},
    ]
    for expression in (
        {"Filters": two},
        {"Filters": [{"Name": "TrainingJobName", "Operator": "Equals"}]},
        {"Filters": [{"Name": "CreationTime", "Operator": "GreaterThan", "Value": "soon"}]},
    ):
        with pytest.raises(ClientError) as caught:
            sagemaker.search(Resource="TrainingJob", SearchExpression=expression)
        assert caught.value.response["Error"]["Code"] == "ValidationException", expression
    with pytest.raises(ClientError) as caught:
        sagemaker.search(Resource="TrainingJob", NextToken="not-a-token")
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    # No record of another kind exists here.
    assert sagemaker.search(Resource="Experiment")["Results"] == []


def test_warm_pool_and_updates(api_server: ApiServer, tmp_path: Path) -> None:
    sagemaker = api_server.client("sagemaker")
    name = f"upd-{uuid.uuid4().hex[:8]}"
    # The job runs until the test, done updating it, stops it.
    image = make_image(tmp_path / "image", "#!/bin/sh\nexec sleep 600\n")
    body = request(name, str(image), f"s3://{new_bucket(api_server)}/out")
    body["ResourceConfig"]["KeepAlivePeriodInSeconds"] = 60
    body["RetryStrategy"] = {"MaximumRetryAttempts": 2}
    try:
        sagemaker.create_training_job(**body)
        running = sagemaker.describe_training_job(TrainingJobName=name)
        assert "WarmPoolStatus" not in running and running["ProfilingStatus"] == "Disabled"
        assert running["RetryStrategy"] == {"MaximumRetryAttempts": 2}

        arn = sagemaker.update_training_job(
            TrainingJobName=name,
            ProfilerConfig={
                "S3OutputPath": "s3://b/profiles",
                "ProfilingIntervalInMilliseconds": 500,
            },
            ResourceConfig={"KeepAlivePeriodInSeconds": 120},
            RemoteDebugConfig={"EnableRemoteDebug": True},
        )["TrainingJobArn"]
        assert arn == running["TrainingJobArn"]
        updated = sagemaker.describe_training_job(TrainingJobName=name)
        assert updated["ProfilingStatus"] == "Enabled"
        assert updated["ProfilerConfig"]["ProfilingIntervalInMilliseconds"] == 500
        assert updated["ResourceConfig"]["KeepAlivePeriodInSeconds"] == 120
        assert updated["RemoteDebugConfig"] == {"EnableRemoteDebug": True}
        for refused in (
            {"ProfilerConfig": {"ProfilingIntervalInMilliseconds": 7}},
            {"ProfilerConfig": {"DisableProfiler": True, "S3OutputPath": "s3://b/p"}},
            {},
        ):
            with pytest.raises(ClientError) as caught:
                sagemaker.update_training_job(TrainingJobName=name, **refused)
            assert caught.value.response["Error"]["Code"] == "ValidationException", refused
    finally:
        sagemaker.stop_training_job(TrainingJobName=name)
        sagemaker.get_waiter("training_job_completed_or_stopped").wait(
            TrainingJobName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
        )
    ended = sagemaker.describe_training_job(TrainingJobName=name)
    pool = {"Status": "Terminated", "ResourceRetainedBillableTimeInSeconds": 0}
    assert ended["WarmPoolStatus"] == pool
    listed = sagemaker.list_training_jobs(NameContains=name, WarmPoolStatusEquals="Terminated")
    assert [s["WarmPoolStatus"] for s in listed["TrainingJobSummaries"]] == [pool]
    with pytest.raises(ClientError) as caught:
        sagemaker.update_training_job(
            TrainingJobName=name, ResourceConfig={"KeepAlivePeriodInSeconds": 300}
        )
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    with pytest.raises(ClientError) as caught:
        sagemaker.update_training_job(
            TrainingJobName="no-such-job", RemoteDebugConfig={"EnableRemoteDebug": True}
        )
    assert caught.value.response["Error"]["Code"] == "ResourceNotFound"
