"""Metric history through the API, as the official clients read it: CloudWatch's
GetMetricStatistics / GetMetricData / ListMetrics, SageMaker Metrics' BatchGetMetrics and the
SDK v2's TrainingJobAnalytics, over one two-host job that prints metric lines."""

from __future__ import annotations

import contextlib
import json
import os
import urllib.error
import urllib.request
from datetime import datetime, timedelta
from typing import Any
from unittest import mock

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.apiserver import ApiServer
from tests.egress import Egress
from tests.helpers import make_image, request

NAMESPACE = "/aws/sagemaker/TrainingJobs"
NO_RETRIES = Config(retries={"max_attempts": 1, "mode": "standard"})
# algo-1 prints 4, 2, 1; algo-2 ten times as much; a second apart, so that 1-second periods
# hold few values each.
SCRIPT = """#!/bin/sh
if grep -q '"current_host": "algo-2"' /opt/ml/input/config/resourceconfig.json; then k=10
else k=1; fi
for v in 4 2 1; do echo "epoch loss=$((v * k))"; sleep 1; done
"""
SYSTEM = {"CPUUtilization", "MemoryUtilization", "DiskUtilization"}


@pytest.fixture(scope="module")
def job(api_server: ApiServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The finished job's description."""
    sagemaker = client(api_server, "sagemaker")
    bucket = "metrics-out"
    client(api_server, "s3").create_bucket(Bucket=bucket)
    image = make_image(tmp_path_factory.mktemp("metrics") / "image", SCRIPT)
    body = request("metrics-two-hosts", str(image), f"s3://{bucket}/out")
    body["ResourceConfig"]["InstanceCount"] = 2
    body["AlgorithmSpecification"]["MetricDefinitions"] = [
        {"Name": "loss", "Regex": r"loss=([0-9]+)"}
    ]
    sagemaker.create_training_job(**body)
    try:
        sagemaker.get_waiter("training_job_completed_or_stopped").wait(
            TrainingJobName=body["TrainingJobName"], WaiterConfig={"Delay": 1, "MaxAttempts": 120}
        )
    finally:
        with contextlib.suppress(ClientError):
            sagemaker.stop_training_job(TrainingJobName=body["TrainingJobName"])
    described: dict[str, Any] = sagemaker.describe_training_job(
        TrainingJobName=body["TrainingJobName"]
    )
    assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")
    return described


def client(server: ApiServer, service: str) -> Any:
    """A client configured only by what `openmaker env` prints (no endpoint_url of its own)."""
    with mock.patch.dict(os.environ, server.env):
        return boto3.session.Session().client(service, config=NO_RETRIES)  # type: ignore[call-overload]


def around(job: dict[str, Any]) -> dict[str, datetime]:
    """A window holding the whole job in one hour-long period."""
    start = job["CreationTime"] - timedelta(minutes=5)
    return {"StartTime": start, "EndTime": start + timedelta(hours=1)}


def test_statistics_of_every_host_and_of_each(api_server: ApiServer, job: dict[str, Any]) -> None:
    cloudwatch = client(api_server, "cloudwatch")
    name = job["TrainingJobName"]
    statistics = ["SampleCount", "Average", "Sum", "Minimum", "Maximum"]
    answer = cloudwatch.get_metric_statistics(
        Namespace=NAMESPACE,
        MetricName="loss",
        Dimensions=[{"Name": "TrainingJobName", "Value": name}],
        Period=3600,
        Statistics=statistics,
        **around(job),
    )
    [point] = answer["Datapoints"]
    assert answer["Label"] == "loss"
    assert {k: point[k] for k in statistics} == {
        "SampleCount": 6,
        "Average": 77 / 6,
        "Sum": 77,
        "Minimum": 1,
        "Maximum": 40,
    }
    # Periods start at the start time rounded down to the minute.
    assert point["Timestamp"] == around(job)["StartTime"].replace(second=0, microsecond=0)
    second = cloudwatch.get_metric_statistics(
        Namespace=NAMESPACE,
        MetricName="loss",
        Dimensions=[{"Name": "Host", "Value": f"{name}/algo-2"}],
        Period=3600,
        ExtendedStatistics=["p50", "p100"],
        **around(job),
    )
    [point] = second["Datapoints"]
    assert point["ExtendedStatistics"] == {"p50": 20, "p100": 40}
    # A window after the job holds nothing.
    later = job["TrainingEndTime"] + timedelta(minutes=2)
    empty = cloudwatch.get_metric_statistics(
        Namespace=NAMESPACE,
        MetricName="loss",
        Dimensions=[{"Name": "TrainingJobName", "Value": name}],
        Period=60,
        Statistics=["Sum"],
        StartTime=later,
        EndTime=later + timedelta(minutes=5),
    )
    assert empty["Datapoints"] == []


def test_each_host_has_its_system_metrics(api_server: ApiServer, job: dict[str, Any]) -> None:
    cloudwatch = client(api_server, "cloudwatch")
    name = job["TrainingJobName"]
    for host in ("algo-1", "algo-2"):
        listed = cloudwatch.list_metrics(
            Namespace=NAMESPACE, Dimensions=[{"Name": "Host", "Value": f"{name}/{host}"}]
        )["Metrics"]
        names = {m["MetricName"] for m in listed}
        # No GPU here: SageMaker publishes GPU metrics only for instances that have them.
        assert names == SYSTEM | {"loss"}
        for metric in SYSTEM:
            [point] = cloudwatch.get_metric_statistics(
                Namespace=NAMESPACE,
                MetricName=metric,
                Dimensions=[{"Name": "Host", "Value": f"{name}/{host}"}],
                Period=3600,
                Statistics=["Maximum", "SampleCount"],
                **around(job),
            )["Datapoints"]
            assert point["Unit"] == "Percent"
            assert point["SampleCount"] >= 1
            # CPU is summed over CPUs, as SageMaker sums an instance's cores.
            most = 100 * (os.cpu_count() or 1) if metric == "CPUUtilization" else 100
            assert 0 <= point["Maximum"] <= most


def test_metric_data_paged_as_the_paginator_reads_it(
    api_server: ApiServer, job: dict[str, Any]
) -> None:
    cloudwatch = client(api_server, "cloudwatch")
    name = job["TrainingJobName"]
    queries = [
        {
            "Id": "loss",
            "MetricStat": {
                "Metric": {
                    "Namespace": NAMESPACE,
                    "MetricName": "loss",
                    "Dimensions": [{"Name": "Host", "Value": f"{name}/algo-1"}],
                },
                "Period": 1,
                "Stat": "Sum",
            },
        },
        {
            "Id": "disk",
            "Label": "disk of algo-2",
            "MetricStat": {
                "Metric": {
                    "Namespace": NAMESPACE,
                    "MetricName": "DiskUtilization",
                    "Dimensions": [{"Name": "Host", "Value": f"{name}/algo-2"}],
                },
                "Period": 3600,
                "Stat": "Maximum",
            },
        },
    ]
    whole = cloudwatch.get_metric_data(
        MetricDataQueries=queries, ScanBy="TimestampAscending", **around(job)
    )
    loss, disk = whole["MetricDataResults"]
    assert loss["Id"] == "loss" and loss["Label"] == "loss" and loss["StatusCode"] == "Complete"
    assert sum(loss["Values"]) == 7 and len(loss["Values"]) >= 2
    assert loss["Timestamps"] == sorted(loss["Timestamps"])
    assert disk["Label"] == "disk of algo-2" and len(disk["Values"]) == 1
    pages = list(
        cloudwatch.get_paginator("get_metric_data").paginate(
            MetricDataQueries=queries,
            ScanBy="TimestampAscending",
            PaginationConfig={"PageSize": 1},
            **around(job),
        )
    )
    assert len(pages) == len(loss["Values"]) + 1
    paged: dict[str, list[Any]] = {}
    for page in pages:
        for result in page["MetricDataResults"]:
            points = zip(result["Timestamps"], result["Values"], strict=True)
            paged.setdefault(result["Id"], []).extend(points)
    assert paged == {
        "loss": list(zip(loss["Timestamps"], loss["Values"], strict=True)),
        "disk": list(zip(disk["Timestamps"], disk["Values"], strict=True)),
    }
    newest_first = cloudwatch.get_metric_data(MetricDataQueries=queries[:1], **around(job))
    assert newest_first["MetricDataResults"][0]["Values"] == loss["Values"][::-1]


def test_list_metrics_by_name_and_dimension(api_server: ApiServer, job: dict[str, Any]) -> None:
    cloudwatch = client(api_server, "cloudwatch")
    name = job["TrainingJobName"]
    listed = [
        metric
        for page in cloudwatch.get_paginator("list_metrics").paginate(
            Namespace=NAMESPACE, MetricName="loss"
        )
        for metric in page["Metrics"]
    ]
    mine = [m for m in listed if name in m["Dimensions"][0]["Value"]]
    assert sorted((m["Dimensions"][0]["Name"], m["Dimensions"][0]["Value"]) for m in mine) == [
        ("Host", f"{name}/algo-1"),
        ("Host", f"{name}/algo-2"),
        ("TrainingJobName", name),
    ]
    assert cloudwatch.list_metrics(Namespace="AWS/EC2")["Metrics"] == []


def test_batch_get_metrics_by_the_jobs_arn(api_server: ApiServer, job: dict[str, Any]) -> None:
    metrics = client(api_server, "sagemaker-metrics")
    query = {
        "MetricName": "loss",
        "ResourceArn": job["TrainingJobArn"],
        "MetricStat": "Count",
        "Period": "OneHour",
        "XAxisType": "Timestamp",
    }
    unknown = {**query, "ResourceArn": job["TrainingJobArn"] + "-none"}
    iterations = {**query, "MetricStat": "Max", "Period": "IterationNumber"}
    iterations["XAxisType"] = "IterationNumber"
    by_hour, missing, by_iteration = metrics.batch_get_metrics(
        MetricQueries=[query, unknown, iterations]
    )["MetricQueryResults"]
    assert by_hour["Status"] == "Complete" and sum(by_hour["MetricValues"]) == 6
    for hour in by_hour["XAxisValues"]:
        assert hour % 3600 == 0
        assert abs(hour - job["TrainingStartTime"].timestamp()) < 3600
    assert missing["Status"] == "ValidationError" and "-none" in missing["Message"]
    assert by_iteration["XAxisValues"] == list(range(6))
    assert sorted(by_iteration["MetricValues"]) == [1, 2, 4, 10, 20, 40]


def test_training_job_analytics_of_the_sdk(
    api_server: ApiServer,
    job: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    no_egress: Egress,
) -> None:
    # Configured before the import, as a user's shell is: importing the SDK makes a session.
    for variable, value in api_server.env.items():
        monkeypatch.setenv(variable, value)
    from sagemaker.analytics import TrainingJobAnalytics
    from sagemaker.session import Session

    session = Session(boto_session=boto3.Session())
    analytics = TrainingJobAnalytics(  # type: ignore[no-untyped-call]
        job["TrainingJobName"], sagemaker_session=session
    )
    frame = analytics.dataframe()  # type: ignore[no-untyped-call]
    assert set(frame["metric_name"]) == {"loss"}
    # One-minute periods: the job's six values, averaged within each minute.
    assert len(frame) in (1, 2)
    assert min(frame["value"]) >= 1 and max(frame["value"]) <= 40


def test_bad_requests_are_named(api_server: ApiServer, job: dict[str, Any]) -> None:
    cloudwatch = client(api_server, "cloudwatch")
    dimensions = [{"Name": "TrainingJobName", "Value": job["TrainingJobName"]}]
    good = {
        "Namespace": NAMESPACE,
        "MetricName": "loss",
        "Dimensions": dimensions,
        "Period": 60,
        "Statistics": ["Sum"],
        **around(job),
    }
    with pytest.raises(ClientError) as period:
        cloudwatch.get_metric_statistics(**{**good, "Period": 7})
    assert_error(period.value, "InvalidParameterValue", "Period")
    with pytest.raises(ClientError) as backwards:
        cloudwatch.get_metric_statistics(
            **{**good, "StartTime": good["EndTime"], "EndTime": good["StartTime"]}
        )
    assert_error(backwards.value, "InvalidParameterValue", "EndTime")
    with pytest.raises(ClientError) as many:
        cloudwatch.get_metric_statistics(**{**good, "Period": 1})
    assert_error(many.value, "InvalidParameterCombination", "1,440")
    with pytest.raises(ClientError) as stat:
        cloudwatch.get_metric_data(
            MetricDataQueries=[
                {
                    "Id": "q",
                    "MetricStat": {
                        "Metric": {"Namespace": NAMESPACE, "MetricName": "loss"},
                        "Period": 60,
                        "Stat": "Median",
                    },
                }
            ],
            **around(job),
        )
    assert_error(stat.value, "InvalidParameterValue", "MetricDataQueries.member.1.MetricStat.Stat")
    # What no client sends (botocore checks required members first): a raw request.
    request_body = {k: v for k, v in good.items() if k != "Namespace"}
    request_body.update({k: around(job)[k].timestamp() for k in ("StartTime", "EndTime")})
    status, answer, headers = post_cloudwatch(api_server, "GetMetricStatistics", request_body)
    assert status == 400
    assert headers["x-amzn-query-error"] == "MissingParameter;Sender"
    assert answer["__type"] == "MissingRequiredParameterException"
    assert "Namespace" in answer["message"]


def assert_error(error: ClientError, code: str, member: str) -> None:
    assert error.response["Error"]["Code"] == code
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert member in error.response["Error"]["Message"]


def post_cloudwatch(
    server: ApiServer, operation: str, body: dict[str, Any]
) -> tuple[int, Any, dict[str, str]]:
    """A request signed for CloudWatch as botocore signs it, whatever its body holds: (HTTP
    status, the decoded answer, its headers by lower-case name)."""
    url = server.env["AWS_ENDPOINT_URL_CLOUDWATCH"] + "/"
    data = json.dumps(body).encode()
    signed = AWSRequest(
        method="POST",
        url=url,
        data=data,
        headers={
            "Content-Type": "application/x-amz-json-1.0",
            "X-Amz-Target": f"GraniteServiceVersion20100801.{operation}",
        },
    )
    credentials = Credentials(server.env["AWS_ACCESS_KEY_ID"], server.env["AWS_SECRET_ACCESS_KEY"])
    SigV4Auth(credentials, "monitoring", server.env["AWS_REGION"]).add_auth(signed)
    call = urllib.request.Request(url, data=data, headers=dict(signed.headers.items()))
    try:
        with urllib.request.urlopen(call, timeout=30) as answer:
            return answer.status, json.loads(answer.read()), _lower(answer.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), _lower(error.headers)


def _lower(headers: Any) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}
