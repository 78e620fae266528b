"""DescribeTrainingJob as the sagemaker SDK v2 reads it: `attach` for Estimator, SKLearn,
PyTorch and HuggingFace against a real `openmaker server`, and the response member by member
against botocore's output shape."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from openmaker.instances import detect_gpus
from openmaker.shapes.validate import validate_output
from tests.apiserver import ApiServer
from tests.egress import Egress
from tests.helpers import make_image
from tests.test_api_clients import ROLE, client_env, new_bucket

# Members AWS returns for every training job that ran to its end (botocore's output shape
# marks few of them required; the SDK indexes them all the same).
ALWAYS = (
    "TrainingJobName",
    "TrainingJobArn",
    "ModelArtifacts",
    "TrainingJobStatus",
    "SecondaryStatus",
    "AlgorithmSpecification",
    "RoleArn",
    "OutputDataConfig",
    "ResourceConfig",
    "StoppingCondition",
    "CreationTime",
    "TrainingStartTime",
    "TrainingEndTime",
    "LastModifiedTime",
    "SecondaryStatusTransitions",
    "EnableNetworkIsolation",
    "EnableInterContainerTrafficEncryption",
    "EnableManagedSpotTraining",
    "TrainingTimeInSeconds",
    "BillableTimeInSeconds",
    "ProfilingStatus",
)

SCRIPT = """
import json, sys

import sagemaker
from sagemaker.estimator import Estimator
from sagemaker.huggingface import HuggingFace
from sagemaker.pytorch import PyTorch
from sagemaker.sklearn import SKLearn

session = sagemaker.Session(default_bucket={bucket!r})
common = dict(role={role!r}, instance_count=1, sagemaker_session=session, volume_size=7)
script = dict(entry_point="train.py", source_dir={source!r}, hyperparameters={{"alpha": 0.5}})
made = {{
    "Estimator": Estimator(image_uri={image!r}, instance_type="ml.m5.xlarge",
                           hyperparameters={{"epochs": 3}}, **common),
    "SKLearn": SKLearn(framework_version="1.2-1", py_version="py3",
                       instance_type="ml.m5.xlarge", **script, **common),
    "PyTorch": PyTorch(framework_version="2.1", py_version="py310",
                       instance_type="ml.m5.xlarge", **script, **common),
    "HuggingFace": HuggingFace(transformers_version="4.28.1", pytorch_version="2.0.0",
                               py_version="py310", instance_type="ml.g4dn.xlarge",
                               **script, **common),
}}
for estimator in made.values():
    estimator.fit(wait=False)
classes = {{"Estimator": Estimator, "SKLearn": SKLearn, "PyTorch": PyTorch,
            "HuggingFace": HuggingFace}}
for kind, estimator in made.items():
    job = estimator.latest_training_job.name
    attached = classes[kind].attach(job, sagemaker_session=session)
    seen = {{
        "job": job,
        "status": attached.latest_training_job.describe()["TrainingJobStatus"],
        "output_kms_key": attached.output_kms_key,
        "volume_size": attached.volume_size,
        "instance_type": attached.instance_type,
        "max_run": attached.max_run,
        "model_data": attached.model_data,
        "hyperparameters": attached.hyperparameters(),
    }}
    for name in ("framework_version", "py_version", "entry_point", "transformers_version",
                 "pytorch_version", "image_uri"):
        if hasattr(attached, name):
            seen[name] = getattr(attached, name)
    print("ATTACHED", kind, json.dumps(seen, default=str))
"""

TRAIN_PY = """
import os, pathlib
pathlib.Path(os.environ["SM_MODEL_DIR"], "model.txt").write_text("ok")
"""


def test_attach_reads_every_member_it_needs(
    api_server: ApiServer, tmp_path: Path, no_egress: Egress
) -> None:
    bucket = new_bucket(api_server)
    image = make_image(tmp_path / "image", "#!/bin/sh\necho model > /opt/ml/model/model.txt\n")
    source = tmp_path / "src"
    source.mkdir()
    (source / "train.py").write_text(TRAIN_PY)
    script = tmp_path / "attach.py"
    script.write_text(SCRIPT.format(bucket=bucket, role=ROLE, image=str(image), source=str(source)))
    done = subprocess.run(
        no_egress.command([sys.executable, str(script)]),
        env=client_env(api_server, tmp_path / "client-home"),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    attached: dict[str, dict[str, Any]] = {}
    for line in done.stdout.splitlines():
        if line.startswith("ATTACHED "):
            _, kind, text = line.split(" ", 2)
            attached[kind] = json.loads(text)
    assert sorted(attached) == ["Estimator", "HuggingFace", "PyTorch", "SKLearn"]
    for kind, seen in attached.items():
        assert seen["status"] == "Completed", kind
        assert seen["output_kms_key"] == "" and seen["volume_size"] == 7, kind
        assert seen["max_run"] == 24 * 60 * 60, kind
        assert seen["model_data"].startswith(f"s3://{bucket}/{seen['job']}/output/"), kind
    assert attached["Estimator"]["hyperparameters"] == {"epochs": "3"}
    assert attached["SKLearn"]["framework_version"] == "1.2-1"
    assert attached["PyTorch"]["framework_version"] == "2.1"
    assert attached["PyTorch"]["py_version"] == "py310"
    assert attached["HuggingFace"]["framework_version"] == "4.28.1"  # transformers
    assert attached["HuggingFace"]["pytorch_version"] == "2.0.0"
    for kind in ("SKLearn", "PyTorch", "HuggingFace"):
        assert attached[kind]["entry_point"] == "train.py", kind
        assert attached[kind]["hyperparameters"]["alpha"] == "0.5", kind  # as sent

    sagemaker = api_server.client("sagemaker")
    for kind, seen in attached.items():
        described = sagemaker.describe_training_job(TrainingJobName=seen["job"])
        described.pop("ResponseMetadata")
        assert validate_output("DescribeTrainingJob", described) == [], kind
        assert [m for m in ALWAYS if m not in described] == [], kind
        assert described["OutputDataConfig"]["KmsKeyId"] == ""
        assert described["ResourceConfig"]["VolumeSizeInGB"] == 7
        assert described["BillableTimeInSeconds"] == described["TrainingTimeInSeconds"]
        assert [t["Status"] for t in described["SecondaryStatusTransitions"]][-1] == "Completed"
        # No profiling without a ProfilerConfig that asks for it.
        profiler = described.get("ProfilerConfig") or {}
        wanted = bool(profiler.get("S3OutputPath")) and not profiler.get("DisableProfiler")
        assert described["ProfilingStatus"] == ("Enabled" if wanted else "Disabled")

    # A GPU type on a machine without GPUs: said at the top of the job's log, with the Python
    # the framework job ran on.
    logs = api_server.client("logs")
    job = attached["HuggingFace"]["job"]
    stream = logs.describe_log_streams(
        logGroupName="/aws/sagemaker/TrainingJobs", logStreamNamePrefix=f"{job}/"
    )["logStreams"][0]["logStreamName"]
    events = logs.get_log_events(
        logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=stream, startFromHead=True
    )["events"]
    top = [e["message"] for e in events[:3]]
    if not detect_gpus():
        assert any("ml.g4dn.xlarge has 1 GPU" in m and "runs on CPU" in m for m in top), top
    assert any("asks for Python 3.10" in line and "Python 3." in line for line in top), top
