"""The sagemaker SDK v3 (`ModelTrainer`), unchanged, against `openmaker server`.

v3 cannot share an environment with v2 (the test extra's), so its code runs in subprocesses with
the interpreter of `.venv-sdk3` (made by `scripts/install.sh test`: openmaker and the SDK pinned
by the `sdk3` extra, as a user's notebook environment), configured only by what `openmaker env`
prints, and never reaching beyond this machine (tests/egress.py). Starting v3 takes seconds:
each test runs its flows in one subprocess.

With a framework image and `SourceCode`, `ModelTrainer` uploads two channels of its own (`code`,
`sm_drivers`) and starts the job with `ContainerEntrypoint` `/bin/bash -c '... sm_train.sh'`,
whose drivers read the container contract (`resourceconfig.json`, ...) and run the script with
`python`, `torchrun` or `mpirun`."""

from __future__ import annotations

import importlib.util
import io
import json
import re
import subprocess
import tarfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

import tests.egress
from tests.apiserver import ApiServer, stop_all
from tests.egress import Egress
from tests.helpers import request
from tests.test_api_clients import client_env, new_bucket

SDK3_PYTHON = Path(__file__).resolve().parents[1] / ".venv-sdk3" / "bin" / "python"
SKLEARN_IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"
ROLE = "arn:aws:iam::000000000000:role/SageMakerRole"

# What a notebook does; the SDK logs the job's lines (and its own steps) at INFO.
SCRIPT_MODE = """
import json, logging, os, sys
logging.basicConfig(level=logging.INFO, format="%(message)s")

from sagemaker.core import image_uris
from sagemaker.core.resources import TrainingJob
from sagemaker.train import ModelTrainer
from sagemaker.train.configs import Compute, InputData, SourceCode

source, data, role = sys.argv[1:4]
image = image_uris.retrieve(framework="sklearn", region=os.environ["AWS_REGION"],
                            version="1.2-1", py_version="py3", instance_type="ml.m5.xlarge",
                            image_scope="training")
inputs = [InputData(channel_name="train", data_source=data)]

def trainer(base_job_name, role=None):
    return ModelTrainer(training_image=image, role=role, base_job_name=base_job_name,
                        source_code=SourceCode(source_dir=source, entry_script="train.py"),
                        compute=Compute(instance_type="ml.m5.xlarge", instance_count=1),
                        hyperparameters={"alpha": 0.5})

# Started without waiting (no role given: the SDK takes the configured one and validates it) ...
later = trainer("v3-later")
later.train(input_data_config=inputs, wait=False)
later_name = later._latest_training_job.training_job_name
# ... while another, with a role of its own, is followed to its end with its logs.
now = trainer("v3-now", role=role)
now.train(input_data_config=inputs, wait=True, logs=True)
print("NOW", now._latest_training_job.training_job_name)
# The first one found again by name, as another process would, and waited for.
found = TrainingJob.get(training_job_name=later_name)
found.wait()
print("LATER", later_name, TrainingJob.get(training_job_name=later_name).training_job_status)
print("ALL", json.dumps([job.training_job_name for job in TrainingJob.get_all()]))
"""

TRAIN_PY = """
import argparse, os, pathlib
parser = argparse.ArgumentParser()
parser.add_argument("--alpha", type=float)
args = parser.parse_args()
rows = (pathlib.Path(os.environ["SM_CHANNEL_TRAIN"]) / "data.csv").read_text().split()
print(f"v3 read {len(rows)} rows with alpha={args.alpha} in {os.getcwd()}")
(pathlib.Path(os.environ["SM_MODEL_DIR"]) / "model.txt").write_text(str(args.alpha))
"""

# Two jobs at once, each on two hosts: each job's algo-1 has an address of its own, so both
# torchrun rendezvous on algo-1:7777 without meeting. Both are started before either is waited
# for, and each takes seconds to start torch: they run at once. (A barrier between them would
# make sure of it, but a job's credentials reach only its own data.)
TORCHRUN = """
import logging, os, sys
logging.basicConfig(level=logging.INFO, format="%(message)s")

from sagemaker.core import image_uris
from sagemaker.train import ModelTrainer
from sagemaker.train.configs import Compute, SourceCode
from sagemaker.train.distributed import Torchrun

image = image_uris.retrieve(framework="pytorch", region=os.environ["AWS_REGION"], version="2.5",
                            py_version="py311", instance_type="ml.m5.xlarge",
                            image_scope="training")
trainers = [
    ModelTrainer(training_image=image, base_job_name=f"v3-torchrun-{which}",
                 source_code=SourceCode(source_dir=sys.argv[1], entry_script="reduce.py"),
                 compute=Compute(instance_type="ml.m5.xlarge", instance_count=2,
                                 volume_size_in_gb=2),
                 distributed=Torchrun())
    for which in "ab"
]
for trainer in trainers:
    trainer.train(wait=False)
for trainer in trainers:
    trainer._latest_training_job.wait(logs=True)
    print("JOB", trainer._latest_training_job.training_job_name)
"""

REDUCE_PY = """
import os
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
total = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(total)
print(f"rank {dist.get_rank()} of {dist.get_world_size()} on {os.environ['SM_CURRENT_HOST']}: "
      f"sum {total.item()}")
dist.destroy_process_group()
"""


# SDK v3's MPI driver asks mpirun for `-np <process_count_per_node>` whatever the host count
# (--host lists each host's slots): the user's own `-np`, after it, asks for every rank.
MPI_TRAINER = """
import logging, os, sys
logging.basicConfig(level=logging.INFO, format="%(message)s")

from sagemaker.core import image_uris
from sagemaker.train import ModelTrainer
from sagemaker.train.configs import Compute, SourceCode
from sagemaker.train.distributed import MPI

image = image_uris.retrieve(framework="pytorch", region=os.environ["AWS_REGION"], version="2.5",
                            py_version="py311", instance_type="ml.m5.xlarge",
                            image_scope="training")
trainer = ModelTrainer(training_image=image, base_job_name="v3-mpi",
                       source_code=SourceCode(source_dir=sys.argv[1], entry_script="ranks.py"),
                       compute=Compute(instance_type="ml.m5.xlarge", instance_count=2,
                                       volume_size_in_gb=2),
                       distributed=MPI(process_count_per_node=2,
                                       mpi_additional_options=["-np", "4"]))
trainer.train(wait=True, logs=True)
print("JOB", trainer._latest_training_job.training_job_name)
"""

# Each rank says where it runs as the host's environment has it: the ranks on algo-2 have it
# from the session sshd gives mpirun there (the driver's /etc/environment, as pam_env would).
RANKS_PY = """
import os
from mpi4py import MPI

world = MPI.COMM_WORLD
hosts = world.allgather(os.environ["SM_CURRENT_HOST"])
print(f"rank {world.Get_rank()} of {world.Get_size()} on {hosts[world.Get_rank()]}: "
      f"hosts {','.join(sorted(set(hosts)))}")
"""


def run_sdk3(server: ApiServer, egress: Egress, tmp_path: Path, script: str, *args: str) -> str:
    """`script` run by v3's interpreter under the egress hook; its output (it must succeed)."""
    if not SDK3_PYTHON.exists():
        pytest.fail(f"{SDK3_PYTHON} is missing: `scripts/install.sh test` makes it")
    path = tmp_path / "notebook.py"
    path.write_text(script)
    hooked = [str(SDK3_PYTHON), tests.egress.__file__, str(egress.report), "--", str(path)]
    done = subprocess.run(
        [*hooked, *args],
        env=client_env(server, tmp_path / "client-home"),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def marked(output: str, marker: str) -> list[str]:
    return next(line.split()[1:] for line in output.splitlines() if line.startswith(marker + " "))


def described(server: ApiServer, name: str) -> dict[str, Any]:
    return dict(server.client("sagemaker").describe_training_job(TrainingJobName=name))


def test_model_trainer_with_a_framework_image_and_source_code(
    api_server: ApiServer, tmp_path: Path, no_egress: Egress
) -> None:
    bucket = new_bucket(api_server)
    s3 = api_server.client("s3")
    s3.put_object(Bucket=bucket, Key="data/train/data.csv", Body=b"1,2\n3,4\n5,6\n")
    source = tmp_path / "src"
    source.mkdir()
    (source / "train.py").write_text(TRAIN_PY)
    try:
        output = run_sdk3(
            api_server,
            no_egress,
            tmp_path,
            SCRIPT_MODE,
            str(source),
            f"s3://{bucket}/data/train",
            ROLE,
        )
    finally:
        stop_all(api_server.client("sagemaker"), _started(api_server, "v3-"))
    # The job's log, streamed by the SDK: the script ran from the `code` channel, with the
    # hyperparameters as arguments and the data channel where SM_CHANNEL_TRAIN says.
    assert "v3 read 3 rows with alpha=0.5 in /opt/ml/input/data/code" in output
    # Role validation stayed on, and passed (IAM on the server, for both roles).
    assert "Skipping IAM role validation" not in output
    assert "Using validated caller role" in output

    (now,) = marked(output, "NOW")
    later, status = marked(output, "LATER")
    assert status == "Completed"
    assert {now, later} <= set(json.loads(output.split("ALL ", 1)[1].splitlines()[0]))
    job = described(api_server, now)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert job["RoleArn"] == ROLE
    assert job["AlgorithmSpecification"]["TrainingImage"] == SKLEARN_IMAGE
    assert job["AlgorithmSpecification"]["ContainerEntrypoint"] == ["/bin/bash"]
    channels = [c["ChannelName"] for c in job["InputDataConfig"]]
    assert sorted(channels) == ["code", "sm_drivers", "train"]
    training = next(t for t in job["SecondaryStatusTransitions"] if t["Status"] == "Training")
    assert "scikit-learn image" in training["StatusMessage"]
    assert "ContainerEntrypoint" in training["StatusMessage"]
    model = job["ModelArtifacts"]["S3ModelArtifacts"]
    archive = s3.get_object(Bucket=model.split("/")[2], Key=model.split("/", 3)[3])["Body"]
    with tarfile.open(fileobj=io.BytesIO(archive.read())) as tar:
        member = tar.extractfile("model.txt")
        assert member is not None and member.read() == b"0.5"
    assert described(api_server, later)["RoleArn"].endswith(":role/openmaker")


@pytest.mark.skipif(
    importlib.util.find_spec("torch") is None,
    reason="the job's Python (openmaker's environment) has no torch, which torchrun needs",
)
def test_two_model_trainers_torchrun_at_once_on_two_hosts_each(
    api_server: ApiServer, tmp_path: Path, no_egress: Egress
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "reduce.py").write_text(REDUCE_PY)
    try:
        output = run_sdk3(api_server, no_egress, tmp_path, TORCHRUN, str(source))
    finally:
        stop_all(api_server.client("sagemaker"), _started(api_server, "v3-torchrun"))
    # Each host's driver started torchrun for its rank; in each job the ranks met, and only
    # each other, and agree on the sum.
    assert output.count("torchrun --nnodes=2 --nproc_per_node=1 --master_addr=algo-1") == 4
    assert output.count("rank 0 of 2 on algo-1: sum 3.0") == 2
    assert output.count("rank 1 of 2 on algo-2: sum 3.0") == 2
    names = [line.split()[1] for line in output.splitlines() if line.startswith("JOB ")]
    assert len(names) == 2
    for name in names:
        job = described(api_server, name)
        assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
        assert job["ResourceConfig"]["InstanceCount"] == 2


@pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None,
    reason="the job's Python (openmaker's environment) has no mpi4py, which v3's MPI driver runs",
)
def test_model_trainer_mpi_on_two_hosts(
    api_server: ApiServer, tmp_path: Path, no_egress: Egress
) -> None:
    # ~40 s: the driver on algo-2 looks for mpirun's end every 30 s.
    source = tmp_path / "src"
    source.mkdir()
    (source / "ranks.py").write_text(RANKS_PY)
    try:
        output = run_sdk3(api_server, no_egress, tmp_path, MPI_TRAINER, str(source))
    finally:
        stop_all(api_server.client("sagemaker"), _started(api_server, "v3-mpi"))
    # The driver's own sshd on each host, reached on port 22 by paramiko and ssh with their
    # defaults; mpirun started the ranks on both hosts, each with its host's environment.
    assert "Master can connect to all worker nodes." in output
    assert "mpirun --host algo-1:2,algo-2:2" in output
    ranks = sorted(re.findall(r"rank (\d+) of (\d+) on ([\w-]+): hosts ([\w,-]+)", output))
    assert ranks == [
        ("0", "4", "algo-1", "algo-1,algo-2"),
        ("1", "4", "algo-1", "algo-1,algo-2"),
        ("2", "4", "algo-2", "algo-1,algo-2"),
        ("3", "4", "algo-2", "algo-1,algo-2"),
    ], output
    (name,) = marked(output, "JOB")
    assert described(api_server, name)["TrainingJobStatus"] == "Completed"


def test_a_framework_image_runs_its_entrypoint_or_is_refused(
    api_server: ApiServer, tmp_path: Path
) -> None:
    sagemaker = api_server.client("sagemaker")
    output = f"s3://{new_bucket(api_server)}/out"
    name = f"entry-{uuid.uuid4().hex[:8]}"
    # Neither script mode's hyperparameters nor an entrypoint: nothing to run.
    with pytest.raises(ClientError) as refused:
        sagemaker.create_training_job(**request(name, SKLEARN_IMAGE, output))
    error = refused.value.response["Error"]
    assert error["Code"] == "ValidationException"
    assert "AlgorithmSpecification.TrainingImage" in error["Message"]
    assert "sagemaker_program" in error["Message"]
    assert "ContainerEntrypoint" in error["Message"]

    body = request(name, SKLEARN_IMAGE, output)
    body["AlgorithmSpecification"]["ContainerEntrypoint"] = ["/bin/sh", "-c"]
    body["AlgorithmSpecification"]["ContainerArguments"] = [
        'command -v python3 > /opt/ml/model/python; echo "$1" > /opt/ml/model/arg',
        "sh",
        "hi",
    ]
    try:
        sagemaker.create_training_job(**body)
        sagemaker.get_waiter("training_job_completed_or_stopped").wait(
            TrainingJobName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
        )
    finally:
        stop_all(sagemaker, [name])
    job = described(api_server, name)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    model = job["ModelArtifacts"]["S3ModelArtifacts"]
    archive = api_server.client("s3").get_object(
        Bucket=model.split("/")[2], Key=model.split("/", 3)[3]
    )["Body"]
    with tarfile.open(fileobj=io.BytesIO(archive.read())) as tar:
        files = {m.name: tar.extractfile(m) for m in tar.getmembers() if m.isfile()}
        contents = {n: f.read().decode().strip() for n, f in files.items() if f is not None}
    # The arguments reach the entrypoint, and the image's Python is on PATH as in the image.
    assert contents["arg"] == "hi"
    assert contents["python"].endswith("/python3")


def _started(server: ApiServer, prefix: str) -> list[str]:
    summaries = server.client("sagemaker").list_training_jobs(NameContains=prefix, MaxResults=100)
    return [s["TrainingJobName"] for s in summaries["TrainingJobSummaries"]]
