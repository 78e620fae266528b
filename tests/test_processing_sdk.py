"""The sagemaker SDK v2's processors, unchanged, against a real `openmaker server`:
`SKLearnProcessor` and `ScriptProcessor` (the script uploaded as an input, run with
`ContainerEntrypoint`), `FrameworkProcessor` and `PyTorchProcessor` (a source folder packed to
`sourcedir.tar.gz`, started by the SDK's `runproc.sh`), each `run(code=..., inputs=...,
outputs=...)` with `wait=True` and `logs=True`. The framework images are played by this
machine's Python, as for training; one SDK process runs every flow (the SDK starts slowly)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from openmaker.runtime import unavailable_reason
from tests.apiserver import ApiServer
from tests.egress import Egress
from tests.test_api_clients import ROLE, client_env, new_bucket

pytestmark = pytest.mark.skipif(
    unavailable_reason() is not None, reason="processing jobs need the bwrap sandbox"
)

SKLEARN_IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"

# Counts the rows of its input into its output folder; prints what it did (its logs).
PROCESS_PY = """
import os, pathlib, sys
rows = (pathlib.Path("/opt/ml/processing/input/data.csv")).read_text().split()
out = pathlib.Path("/opt/ml/processing/output")
out.mkdir(parents=True, exist_ok=True)
(out / "count.txt").write_text(f"{len(rows)} {' '.join(sys.argv[1:])}")
print(f"processed {len(rows)} rows as {os.environ.get('FLOW')}", flush=True)
"""

# The source folder's helper: only a packed source_dir brings it along.
HELPER_PY = "TAG = 'from the source folder'\n"
FRAMEWORK_PY = """
import os, pathlib, sys
from helper import TAG
rows = pathlib.Path("/opt/ml/processing/input/data.csv").read_text().split()
out = pathlib.Path("/opt/ml/processing/output")
(out / "count.txt").write_text(f"{len(rows)} {TAG}")
print(f"processed {len(rows)} rows as {os.environ.get('FLOW')} {TAG}", flush=True)
"""

SCRIPT = """
import sys
import sagemaker
from sagemaker.processing import (FrameworkProcessor, ProcessingInput, ProcessingOutput,
                                  ScriptProcessor)
from sagemaker.pytorch.processing import PyTorchProcessor
from sagemaker.sklearn.estimator import SKLearn
from sagemaker.sklearn.processing import SKLearnProcessor

bucket, role, code, source, image = sys.argv[1:6]
session = sagemaker.Session(default_bucket=bucket)
common = dict(role=role, instance_count=1, instance_type="ml.m5.xlarge",
              sagemaker_session=session)
inputs = [ProcessingInput(source=f"s3://{{bucket}}/data/data.csv",
                          destination="/opt/ml/processing/input")]

def outputs(flow):
    return [ProcessingOutput(source="/opt/ml/processing/output",
                             destination=f"s3://{{bucket}}/out/{{flow}}")]

def done(flow, processor):
    job = processor.latest_job
    print("JOB", flow, job.job_name, job.describe()["ProcessingJobStatus"], flush=True)

flow = "sklearn"
processor = SKLearnProcessor(framework_version="1.2-1", env={{"FLOW": flow}}, **common)
processor.run(code=code, inputs=inputs, outputs=outputs(flow), arguments=["--rows", "all"],
              wait=True, logs=True)
done(flow, processor)

flow = "script"
processor = ScriptProcessor(image_uri=image, command=["python3"], env={{"FLOW": flow}}, **common)
processor.run(code=code, inputs=inputs, outputs=outputs(flow), wait=True, logs=True)
done(flow, processor)

flow = "framework"
processor = FrameworkProcessor(estimator_cls=SKLearn, framework_version="1.2-1",
                               py_version="py3", env={{"FLOW": flow}}, **common)
processor.run(code="framework.py", source_dir=source, inputs=inputs, outputs=outputs(flow),
              wait=True, logs=True)
done(flow, processor)

flow = "pytorch"
processor = PyTorchProcessor(framework_version="2.1", py_version="py310",
                             env={{"FLOW": flow}}, **common)
processor.run(code="framework.py", source_dir=source, inputs=inputs, outputs=outputs(flow),
              wait=True, logs=True)
done(flow, processor)
"""


def test_sdk_processors_run_scripts_and_source_folders(
    api_server: ApiServer, tmp_path: Path, no_egress: Egress
) -> None:
    bucket = new_bucket(api_server)
    s3 = api_server.client("s3")
    s3.put_object(Bucket=bucket, Key="data/data.csv", Body=b"1,2\n3,4\n5,6\n")
    code = tmp_path / "process.py"
    code.write_text(PROCESS_PY)
    source = tmp_path / "src"
    source.mkdir()
    (source / "framework.py").write_text(FRAMEWORK_PY)
    (source / "helper.py").write_text(HELPER_PY)
    script = tmp_path / "sdk.py"
    script.write_text(SCRIPT.format())
    done = subprocess.run(
        no_egress.command(
            [sys.executable, str(script), bucket, ROLE, str(code), str(source), SKLEARN_IMAGE]
        ),
        env=client_env(api_server, tmp_path / "client-home"),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    printed = done.stdout
    # logs=True printed each job's lines as it ran.
    assert "processed 3 rows as sklearn" in printed
    assert "processed 3 rows as script" in printed
    assert "processed 3 rows as framework from the source folder" in printed
    assert "processed 3 rows as pytorch from the source folder" in printed
    jobs = [line.split() for line in printed.splitlines() if line.startswith("JOB ")]
    assert [(flow, state) for _, flow, _, state in jobs] == [
        ("sklearn", "Completed"),
        ("script", "Completed"),
        ("framework", "Completed"),
        ("pytorch", "Completed"),
    ]
    counts = {
        flow: s3.get_object(Bucket=bucket, Key=f"out/{flow}/count.txt")["Body"].read().decode()
        for flow in ("sklearn", "script", "framework", "pytorch")
    }
    assert counts == {
        "sklearn": "3 --rows all",
        "script": "3 ",
        "framework": "3 from the source folder",
        "pytorch": "3 from the source folder",
    }
