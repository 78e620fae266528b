"""Batch transform and processing jobs' control-plane answers through boto3 against a real
`openmaker server`: ListTransformJobs sorted by status, a name taken twice, a stop of an ended
job."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from openmaker.runtime import unavailable_reason
from tests.apiserver import ApiServer
from tests.test_processing import image, processing_request, unique, wait_ended
from tests.test_transform import Transforms

pytestmark = pytest.mark.skipif(
    unavailable_reason() is not None, reason="these jobs need the bwrap sandbox"
)


@pytest.fixture
def transforms(api_server: ApiServer, tmp_path: Path) -> Iterator[Transforms]:
    made = Transforms(api_server, tmp_path)
    try:
        yield made
    finally:
        made.stop_all()


def _error(call: Any, **params: Any) -> tuple[str, str]:
    with pytest.raises(ClientError) as raised:
        call(**params)
    error = raised.value.response["Error"]
    return error["Code"], error["Message"]


def test_transform_jobs_sorted_by_status_and_their_errors(transforms: Transforms) -> None:
    sagemaker = transforms.sagemaker
    model = transforms.model()
    good = transforms.create(model, transforms.inputs({"a.csv": "1,2\n"}))
    bad = transforms.create(model, transforms.inputs({"a.csv": "bad\n"}))
    assert transforms.wait(good)["TransformJobStatus"] == "Completed"
    assert transforms.wait(bad)["TransformJobStatus"] == "Failed"
    # The newer job fails: sorting by creation time would list it last, by status first.
    ours = {good, bad}
    for order, expected in (("Ascending", [good, bad]), ("Descending", [bad, good])):
        listed = sagemaker.list_transform_jobs(SortBy="Status", SortOrder=order, MaxResults=100)
        names = [s["TransformJobName"] for s in listed["TransformJobSummaries"]]
        statuses = [s["TransformJobStatus"] for s in listed["TransformJobSummaries"]]
        assert statuses == sorted(statuses, reverse=order == "Descending")
        assert [n for n in names if n in ours] == expected

    described = sagemaker.describe_transform_job(TransformJobName=good)
    again = {
        "TransformJobName": good,
        "ModelName": model,
        "TransformInput": described["TransformInput"],
        "TransformOutput": described["TransformOutput"],
        "TransformResources": described["TransformResources"],
    }
    assert _error(sagemaker.create_transform_job, **again) == (
        "ResourceInUse",
        f"Transform job {good} already exists",
    )
    assert _error(sagemaker.stop_transform_job, TransformJobName=bad) == (
        "ValidationException",
        "The request was rejected because the transform job is in status Failed.",
    )


def test_processing_job_name_taken_and_stop_of_an_ended_job(
    api_server: ApiServer, tmp_path: Path
) -> None:
    sagemaker = api_server.client("sagemaker")
    name = unique("twice")
    request = processing_request(name, image(tmp_path, "print('done')\n"))
    sagemaker.create_processing_job(**request)
    assert wait_ended(sagemaker, name)["ProcessingJobStatus"] == "Completed"
    assert _error(sagemaker.create_processing_job, **request) == (
        "ResourceInUse",
        f"Processing job {name} already exists",
    )
    assert _error(sagemaker.stop_processing_job, ProcessingJobName=name) == (
        "ValidationException",
        "The request was rejected because the processing job is in status Completed.",
    )
