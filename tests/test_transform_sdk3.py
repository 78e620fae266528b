"""The sagemaker SDK v3's resource classes (`sagemaker.core.resources.TransformJob`,
`ProcessingJob`), unchanged, against a real `openmaker server`: each created with v3's shapes
and waited for with `wait()`, in one subprocess of `.venv-sdk3` (tests/test_sdk_v3.py
says why)."""

from __future__ import annotations

from pathlib import Path

import pytest

from openmaker.runtime import unavailable_reason
from tests.apiserver import ApiServer
from tests.egress import Egress
from tests.test_api_clients import ROLE, new_bucket
from tests.test_processing import image
from tests.test_sdk_v3 import run_sdk3
from tests.test_transform import Transforms, lines, sums

pytestmark = pytest.mark.skipif(
    unavailable_reason() is not None, reason="these jobs need the bwrap sandbox"
)

COUNT_SCRIPT = """
rows = open("/opt/ml/processing/in/rows.csv").read().split()
open("/opt/ml/processing/out/count.txt", "w").write(str(len(rows)))
print("v3 counted", len(rows), "rows", flush=True)
"""

NOTEBOOK = """
import sys
from sagemaker.core.resources import ProcessingJob, TransformJob
from sagemaker.core.shapes import (AppSpecification, ProcessingClusterConfig, ProcessingInput,
    ProcessingOutput, ProcessingOutputConfig, ProcessingResources, ProcessingS3Input,
    ProcessingS3Output, TransformDataSource, TransformInput, TransformOutput,
    TransformResources, TransformS3DataSource)

model, data, out, bucket, role, image, entry = sys.argv[1:8]
job = TransformJob.create(
    transform_job_name="v3-" + model, model_name=model, batch_strategy="MultiRecord",
    transform_input=TransformInput(
        data_source=TransformDataSource(s3_data_source=TransformS3DataSource(
            s3_data_type="S3Prefix", s3_uri=data)),
        content_type="text/csv", split_type="Line"),
    transform_output=TransformOutput(s3_output_path=out, assemble_with="Line"),
    transform_resources=TransformResources(instance_type="ml.m5.large", instance_count=1))
job.wait(poll=1)
print("TRANSFORM", job.transform_job_name, job.transform_job_status, flush=True)

processing = ProcessingJob.create(
    processing_job_name="v3-proc-" + model, role_arn=role,
    app_specification=AppSpecification(image_uri=image, container_entrypoint=entry.split()),
    processing_resources=ProcessingResources(cluster_config=ProcessingClusterConfig(
        instance_count=1, instance_type="ml.m5.large", volume_size_in_gb=1)),
    processing_inputs=[ProcessingInput(input_name="in", s3_input=ProcessingS3Input(
        s3_uri=f"s3://{bucket}/in", local_path="/opt/ml/processing/in",
        s3_data_type="S3Prefix", s3_input_mode="File"))],
    processing_output_config=ProcessingOutputConfig(outputs=[ProcessingOutput(
        output_name="out", s3_output=ProcessingS3Output(
            s3_uri=f"s3://{bucket}/counted", local_path="/opt/ml/processing/out",
            s3_upload_mode="EndOfJob"))]))
processing.wait(poll=1)
print("PROCESSING", processing.processing_job_name, processing.processing_job_status, flush=True)
"""


def test_v3_resources_run_a_transform_and_a_processing_job(
    api_server: ApiServer, tmp_path: Path, no_egress: Egress
) -> None:
    transforms = Transforms(api_server, tmp_path)
    bucket = new_bucket(api_server)
    s3 = api_server.client("s3")
    s3.put_object(Bucket=bucket, Key="in/rows.csv", Body=b"1\n2\n")
    model = transforms.model()
    prefix = transforms.inputs({"a.csv": lines(5)})
    uri, entrypoint = image(tmp_path, COUNT_SCRIPT)
    transforms.jobs.append("v3-" + model)
    try:
        output = run_sdk3(
            api_server,
            no_egress,
            tmp_path,
            NOTEBOOK,
            model,
            f"s3://batch/{prefix}/",
            f"s3://batch/out-v3-{model}",
            bucket,
            ROLE,
            uri,
            " ".join(entrypoint),
        )
    finally:
        transforms.stop_all()
    assert f"TRANSFORM v3-{model} Completed" in output
    assert f"PROCESSING v3-proc-{model} Completed" in output
    assert transforms.output("v3-" + model, "a.csv.out") == sums(5)
    assert s3.get_object(Bucket=bucket, Key="counted/count.txt")["Body"].read() == b"2"
