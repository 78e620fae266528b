"""Batch transform and processing jobs through the aws CLI and openmaker's own CLI, unchanged,
against a real `openmaker server`: created, followed to their end (`--wait` prints the status and
the job's log lines), listed, described, their logs printed."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openmaker.runtime import unavailable_reason
from tests.apiserver import ApiServer, openmaker_command
from tests.egress import Egress
from tests.test_api_clients import aws, client_env
from tests.test_processing import image, processing_request, s3_input, s3_output, stop_all, unique
from tests.test_transform import Transforms, lines, sums

pytestmark = pytest.mark.skipif(
    unavailable_reason() is not None, reason="these jobs need the bwrap sandbox"
)

COUNT_SCRIPT = """
import os
rows = open("/opt/ml/processing/in/rows.csv").read().split()
os.makedirs("/opt/ml/processing/out", exist_ok=True)
open("/opt/ml/processing/out/count.txt", "w").write(str(len(rows)))
print("counted", len(rows), "rows", flush=True)
"""


@pytest.fixture
def transforms(api_server: ApiServer, tmp_path: Path) -> Iterator[Transforms]:
    made = Transforms(api_server, tmp_path)
    try:
        yield made
    finally:
        made.stop_all()


def _openmaker(
    server: ApiServer, egress: Egress, home: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        egress.command([*openmaker_command(), *args]),
        env=client_env(server, home),
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_transform_jobs_through_the_aws_cli_and_openmaker_transform(
    transforms: Transforms, tmp_path: Path, no_egress: Egress
) -> None:
    server = transforms.server
    model = transforms.model()
    prefix = transforms.inputs({"a.csv": lines(4), "b.csv": lines(2, 5)})
    name = "cli-" + prefix
    request: dict[str, Any] = {
        "TransformJobName": name,
        "ModelName": model,
        "BatchStrategy": "MultiRecord",
        "TransformInput": {
            "DataSource": {
                "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://batch/{prefix}/"}
            },
            "ContentType": "text/csv",
            "SplitType": "Line",
        },
        "TransformOutput": {"S3OutputPath": f"s3://batch/out-cli-{prefix}"},
        "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": 1},
    }
    transforms.jobs.append(name)
    (tmp_path / "job.json").write_text(json.dumps(request))
    created = aws(
        server,
        no_egress,
        "sagemaker",
        "create-transform-job",
        "--cli-input-json",
        f"file://{tmp_path / 'job.json'}",
    )
    assert created["TransformJobArn"].endswith(f"transform-job/{name}")
    transforms.wait(name)
    described = aws(
        server, no_egress, "sagemaker", "describe-transform-job", "--transform-job-name", name
    )
    assert described["TransformJobStatus"] == "Completed"
    listed = aws(server, no_egress, "sagemaker", "list-transform-jobs", "--name-contains", name)
    assert [s["TransformJobName"] for s in listed["TransformJobSummaries"]] == [name]
    assert transforms.output(name, "b.csv.out") == sums(2, 5)

    # openmaker transform, from flags, follows the job to its end: status and log lines.
    home = tmp_path / "client-home"
    flagged = "flags-" + prefix
    transforms.jobs.append(flagged)
    ran = _openmaker(
        server,
        no_egress,
        home,
        "transform",
        "--model",
        model,
        "--input",
        f"s3://batch/{prefix}/",
        "--output",
        f"s3://batch/out-{flagged}",
        "--content-type",
        "text/csv",
        "--split-type",
        "Line",
        "--strategy",
        "MultiRecord",
        "--assemble-with",
        "Line",
        "--job-name",
        flagged,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "InProgress" in ran.stdout and "Completed." in ran.stdout
    assert "request of 4 lines" in ran.stdout  # the container's own log line
    assert transforms.output(flagged, "a.csv.out") == sums(4)
    listed_cli = _openmaker(server, no_egress, home, "transform", "list", "--name-contains", prefix)
    assert name in listed_cli.stdout and flagged in listed_cli.stdout
    shown = _openmaker(server, no_egress, home, "transform", "describe", flagged, "--json")
    assert json.loads(shown.stdout)["TransformJobStatus"] == "Completed"
    logs = _openmaker(server, no_egress, home, "transform", "logs", flagged)
    assert "request of 2 lines" in logs.stdout


def test_processing_jobs_through_the_aws_cli_and_openmaker_process(
    api_server: ApiServer, tmp_path: Path, no_egress: Egress
) -> None:
    s3 = api_server.client("s3")
    sagemaker = api_server.client("sagemaker")
    s3.create_bucket(Bucket="proc-clients")
    s3.put_object(Bucket="proc-clients", Key="in/rows.csv", Body=b"1\n2\n3\n")
    uri, entrypoint = image(tmp_path, COUNT_SCRIPT)
    names = [unique("aws-proc"), unique("om-proc")]
    try:
        request = processing_request(
            names[0],
            (uri, entrypoint),
            inputs=[s3_input("in", "s3://proc-clients/in", "/opt/ml/processing/in")],
            outputs=[s3_output("out", "s3://proc-clients/aws", "/opt/ml/processing/out")],
        )
        (tmp_path / "job.json").write_text(json.dumps(request))
        created = aws(
            api_server,
            no_egress,
            "sagemaker",
            "create-processing-job",
            "--cli-input-json",
            f"file://{tmp_path / 'job.json'}",
        )
        assert created["ProcessingJobArn"].endswith(f"processing-job/{names[0]}")
        sagemaker.get_waiter("processing_job_completed_or_stopped").wait(
            ProcessingJobName=names[0], WaiterConfig={"Delay": 1, "MaxAttempts": 120}
        )
        described = aws(
            api_server,
            no_egress,
            "sagemaker",
            "describe-processing-job",
            "--processing-job-name",
            names[0],
        )
        assert described["ProcessingJobStatus"] == "Completed"
        body = s3.get_object(Bucket="proc-clients", Key="aws/count.txt")["Body"].read()
        assert body == b"3"

        home = tmp_path / "client-home"
        ran = _openmaker(
            api_server,
            no_egress,
            home,
            "process",
            "--image",
            uri,
            *(f"--entrypoint={word}" for word in entrypoint),
            "--input",
            "/opt/ml/processing/in=s3://proc-clients/in",
            "--output",
            "/opt/ml/processing/out=s3://proc-clients/om",
            "--job-name",
            names[1],
        )
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert "InProgress" in ran.stdout and "Completed." in ran.stdout
        assert "counted 3 rows" in ran.stdout
        assert s3.get_object(Bucket="proc-clients", Key="om/count.txt")["Body"].read() == b"3"
        listed = _openmaker(api_server, no_egress, home, "process", "list")
        assert names[0] in listed.stdout and names[1] in listed.stdout
        stopped = _openmaker(api_server, no_egress, home, "process", "stop", names[1])
        assert stopped.returncode == 1 and "Completed" in stopped.stderr
    finally:
        stop_all(sagemaker, names)
