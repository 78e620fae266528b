"""The SDK's `distribution` options, run as SageMaker's framework containers run them: torchrun
on every host, mpirun over ssh across the hosts, and a clear refusal for what cannot run here.
Through the sagemaker SDK v2, unchanged, against a real `openmaker server`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.apiserver import ApiServer
from tests.test_api_clients import ROLE, client_env, new_bucket

SDK_SCRIPT = """
import sys

import sagemaker
from sagemaker.pytorch import PyTorch

distribution = {{
    "torch_distributed": {{"torch_distributed": {{"enabled": True}}}},
    "mpi": {{"mpi": {{"enabled": True, "processes_per_host": 2}}}},
    "smdistributed": {{"smdistributed": {{"modelparallel": {{
        "enabled": True, "parameters": {{"partitions": 2}}}}}}, "mpi": {{"enabled": True}}}},
}}[sys.argv[1]]
# The SDK lets torch_distributed and smdistributed run on GPU instance types only; openmaker
# runs them on the CPU.
instance_type = "ml.m5.large" if sys.argv[1] == "mpi" else "ml.g5.xlarge"
if sys.argv[1] == "smdistributed":
    instance_type = "ml.p4d.24xlarge"
estimator = PyTorch(
    entry_point="train.py", source_dir={source!r}, framework_version="2.0.1", py_version="py310",
    role={role!r}, instance_count=2, instance_type=instance_type, distribution=distribution,
    sagemaker_session=sagemaker.Session(default_bucket={bucket!r}),
    max_run=300,
)
try:
    estimator.fit(logs=True)
except Exception as exc:
    print("FIT FAILED", type(exc).__name__, exc)
    raise SystemExit(3)
print("JOB", estimator.latest_training_job.name)
"""

TORCH_TRAIN = """
import os, socket
import torch
import torch.distributed as dist

dist.init_process_group("gloo")  # RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT from torchrun
rank, world = dist.get_rank(), dist.get_world_size()
tensor = torch.tensor([float(rank + 1)])
dist.all_reduce(tensor)
print(f"RESULT host={socket.gethostname()} rank={rank} world={world} "
      f"nproc={os.environ['LOCAL_WORLD_SIZE']} master={os.environ['MASTER_ADDR']}:"
      f"{os.environ['MASTER_PORT']} sum={tensor.item()}", flush=True)
dist.destroy_process_group()
"""

MPI_TRAIN = """
import socket
from mpi4py import MPI

world = MPI.COMM_WORLD
total = world.allreduce(world.Get_rank() + 1)
print(f"RANK rank={world.Get_rank()} size={world.Get_size()} host={socket.gethostname()} "
      f"sum={total}", flush=True)
"""


def _run_sdk(server: ApiServer, tmp_path: Path, kind: str, train: str) -> str:
    bucket = new_bucket(server)
    source = tmp_path / "src"
    source.mkdir()
    (source / "train.py").write_text(train)
    script = tmp_path / "sdk.py"
    script.write_text(SDK_SCRIPT.format(source=str(source), role=ROLE, bucket=bucket))
    # The client's output in a file: what the job printed is still there if it hangs.
    output = tmp_path / "client.log"
    with output.open("w") as sink:
        try:
            subprocess.run(
                [sys.executable, str(script), kind],
                env=client_env(server, tmp_path / "client-home"),
                stdout=sink,
                stderr=subprocess.STDOUT,
                timeout=400,
                cwd=tmp_path,
            )
        except subprocess.TimeoutExpired:
            sink.write("\nCLIENT TIMED OUT\n")
    return output.read_text()


def test_torch_distributed_runs_torchrun_on_every_host(
    api_server: ApiServer, tmp_path: Path
) -> None:
    printed = _run_sdk(api_server, tmp_path, "torch_distributed", TORCH_TRAIN)
    results = re.findall(
        r"RESULT host=(\S+) rank=(\d+) world=(\d+) nproc=(\d+) master=(\S+) sum=(\S+)", printed
    )
    assert results, printed
    worlds = {int(world) for _, _, world, _, _, _ in results}
    nprocs = {int(nproc) for _, _, _, nproc, _, _ in results}
    assert len(worlds) == 1 and len(nprocs) == 1, results
    world, nproc = worlds.pop(), nprocs.pop()
    assert world == 2 * nproc  # every process of both hosts in one group
    assert sorted(int(rank) for _, rank, _, _, _, _ in results) == list(range(world))
    assert {host for host, *_ in results} == {"algo-1", "algo-2"}
    assert {master for *_, master, _ in results} == {"algo-1:7777"}
    # Every host agrees on the all-reduced sum 1 + 2 + … + world.
    assert {float(total) for *_, total in results} == {world * (world + 1) / 2}
    assert "JOB " in printed, printed


def test_mpi_runs_ranks_on_every_host(api_server: ApiServer, tmp_path: Path) -> None:
    printed = _run_sdk(api_server, tmp_path, "mpi", MPI_TRAIN)
    ranks = re.findall(r"RANK rank=(\d+) size=(\d+) host=(\S+) sum=(\d+)", printed)
    assert sorted(int(rank) for rank, *_ in ranks) == [0, 1, 2, 3], printed
    assert {int(size) for _, size, _, _ in ranks} == {4}
    assert {host for _, _, host, _ in ranks} == {"algo-1", "algo-2"}
    assert {int(total) for *_, total in ranks} == {10}
    assert "JOB " in printed, printed


def test_smdistributed_is_refused_at_create(api_server: ApiServer, tmp_path: Path) -> None:
    printed = _run_sdk(api_server, tmp_path, "smdistributed", MPI_TRAIN)
    assert "FIT FAILED" in printed, printed
    assert "ValidationException" in printed
    assert "HyperParameters.mp_parameters" in printed
    assert "smdistributed.modelparallel" in printed
