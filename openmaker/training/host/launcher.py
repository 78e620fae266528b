"""Inside the sandbox: start the user's script with the launcher its `distribution` asks for.

SageMaker's framework containers name their own module in SAGEMAKER_TRAINING_MODULE; the
toolkit's `train` imports it and calls it. openmaker names this one, which chooses as SageMaker's
PyTorch container does (see openmaker/shapes/distribution.py):
- no distribution: the script, once per host;
- torch_distributed: the toolkit's torchrun runner, `torchrun --nnodes N --nproc_per_node P
  --master_addr algo-1 --master_port 7777 --node_rank R` on every host;
- mpi, pytorchddp (smdistributed dataparallel, as SDK v2 sends it): mpirun on the first host,
  over ssh into the others (ssh.py), ranks on every host; the other hosts run
  sshd and wait for their share of the ranks to end, as SageMaker's MPI workers do;
- parameter_server, multi_worker_mirrored_strategy: TF_CONFIG as the TensorFlow container
  sets it, then the script once per host (no parameter server process: that is TensorFlow's).
It runs on the job's Python; it imports only the standard library, the toolkit and
openmaker.shapes.distribution.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from sagemaker_training import entry_point, environment, logging_config, process, runner

from openmaker.shapes.distribution import (
    MPI,
    MPIRUN,
    PROCESS,
    TF_CONFIG,
    TORCHRUN,
    enabled,
    strategy_of,
)

MASTER_PORT = "7777"  # SageMaker's PyTorch container's MASTER_PORT and torchrun --master_port
SSH_FOLDER = "/etc/openmaker/ssh"  # ssh.py
_CLIENT_CONFIG = "/etc/ssh/ssh_config.d/openmaker.conf"
# The TensorFlow container's ports: workers' gRPC servers and parameter servers.
_TF_WORKER_PORT, _TF_PS_PORT = 2222, 2223
# As SageMaker's MPI runner: an hour for the other hosts' sshd; a file that tells them mpirun
# has ended.
_WORKERS_TIMEOUT = 60 * 60
MPI_DONE_FILE = "/tmp/openmaker-mpirun-done"

logger = logging_config.get_logger()


def main() -> None:
    env = environment.Environment()
    hyperparameters = json.loads(
        (Path(environment.input_config_dir) / "hyperparameters.json").read_text()
    )
    strategy = strategy_of(hyperparameters)
    # As SageMaker's PyTorch container, whatever the launcher.
    os.environ["MASTER_ADDR"] = env.master_hostname
    os.environ["MASTER_PORT"] = MASTER_PORT
    if strategy.launcher == TF_CONFIG:
        os.environ["TF_CONFIG"] = json.dumps(tf_config(env, strategy.parameter_server))
    env_vars = env.to_env_vars()
    kind: Any = runner.ProcessRunnerType
    if strategy.launcher == TORCHRUN:
        logger.info("openmaker: distribution torch_distributed, starting torchrun")
        kind = runner.TorchDistributedRunnerType
    elif strategy.launcher == MPIRUN and len(env.hosts) > 1 and not env.is_master:
        kind = MpiWorker(env.user_entry_point, env.to_cmd_args(), env_vars, 1)
    elif strategy.launcher == MPIRUN:
        per_host = strategy.processes_per_host or max(int(env.num_gpus), 1)
        kind = MpiMaster(
            env.user_entry_point, env.to_cmd_args(), env_vars, per_host, env.hosts,
            strategy.custom_mpi_options, mpi4py=enabled(hyperparameters, MPI),
        )  # fmt: skip
    else:
        assert strategy.launcher in (PROCESS, TF_CONFIG)
    entry_point.run(
        uri=env.module_dir,
        user_entry_point=env.user_entry_point,
        args=env.to_cmd_args(),
        env_vars=env_vars,
        capture_error=True,
        runner_type=kind,
    )


def tf_config(env: Any, parameter_server: bool) -> dict[str, Any]:
    """TF_CONFIG as SageMaker's TensorFlow container writes it: the first host is `master` (or
    `chief` without parameter servers), the others `worker`; every host a parameter server."""
    hosts = list(env.hosts)
    first = "master" if parameter_server else "chief"
    cluster: dict[str, list[str]] = {first: [f"{hosts[0]}:{_TF_WORKER_PORT}"]}
    if len(hosts) > 1:
        cluster["worker"] = [f"{host}:{_TF_WORKER_PORT}" for host in hosts[1:]]
    if parameter_server:
        cluster["ps"] = [f"{host}:{_TF_PS_PORT}" for host in hosts]
    index = hosts.index(env.current_host)
    task = {"type": first, "index": 0} if index == 0 else {"type": "worker", "index": index - 1}
    return {"cluster": cluster, "environment": "cloud", "task": task}


# ssh, for mpirun (and any launcher that needs the job's hosts to reach each other).


def enable_ssh() -> int:
    """Point the ssh client at the job's hosts (port, key, host key); returns sshd's port."""
    folder = Path(SSH_FOLDER)
    if not (folder / "port").is_file():
        raise RuntimeError(
            "ssh between the job's hosts is not set up (it needs openmaker's sandbox)"
        )
    client = Path(_CLIENT_CONFIG)
    client.parent.mkdir(parents=True, exist_ok=True)
    client.write_text(f"Include {SSH_FOLDER}/ssh_config\n")
    return int((folder / "port").read_text())


def start_sshd() -> subprocess.Popen[bytes]:
    """This host's sshd, for the job's own key only (see ssh.py)."""
    enable_ssh()
    return subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", f"{SSH_FOLDER}/sshd_config"])


def sshd_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=5) as connection:
            return connection.recv(4).startswith(b"SSH-")
    except OSError:
        return False


class MpiMaster(process.ProcessRunner):
    """mpirun over every host, with the options of SageMaker's MPI runner. MPI's own traffic goes
    over `eth0` where each host has a network of its own (network.py), as in SageMaker's
    containers, and over `lo` where the job's hosts share this machine's loopback interface."""

    def __init__(
        self,
        user_entry_point: str,
        args: list[str],
        env_vars: dict[str, str],
        processes_per_host: int,
        hosts: list[str],
        custom_mpi_options: str,
        mpi4py: bool,
    ) -> None:
        super().__init__(user_entry_point, args, env_vars, processes_per_host)
        self._hosts = hosts
        self._custom = custom_mpi_options
        # As SageMaker's MPI runner, through mpi4py (when the job's Python has it).
        self._mpi4py = mpi4py and importlib.util.find_spec("mpi4py") is not None

    def _setup(self) -> None:
        if len(self._hosts) == 1:
            return
        port = enable_ssh()
        deadline = time.monotonic() + _WORKERS_TIMEOUT
        for host in self._hosts[1:]:
            logger.info("openmaker: waiting for sshd on %s", host)
            while not sshd_answers(host, port):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"host {host} did not start sshd in time")
                time.sleep(0.2)  # sshd is another host's process: nothing to wait on but it

    def _create_command(self) -> list[str]:
        per_host = self._processes_per_host
        hosts = ",".join(f"{host}:{per_host}" for host in self._hosts)
        command = ["mpirun", "--host", hosts, "-np", str(per_host * len(self._hosts))]
        command += ["--allow-run-as-root", "--display-map", "--tag-output"]
        command += ["-bind-to", "none", "-map-by", "slot"]
        interface = "eth0" if os.path.exists("/sys/class/net/eth0") else "lo"
        mca = {
            "btl_tcp_if_include": interface,
            "oob_tcp_if_include": interface,
            "plm_rsh_no_tree_spawn": "1",
            "pml": "ob1",
            "btl": "^openib",
            "orte_abort_on_non_zero_status": "1",
            "btl_vader_single_copy_mechanism": "none",
        }
        for name, setting in mca.items():
            command += ["-mca", name, setting]
        command += ["-x", "PATH", "-x", "LD_LIBRARY_PATH", "-x", "MASTER_ADDR", "-x", "MASTER_PORT"]
        for name in self._env_vars:
            command += ["-x", name]
        command += self._custom.split()
        return command + list(super()._create_command())

    def run(self, wait: bool = True, capture_error: bool = False) -> Any:
        try:
            return super().run(wait, capture_error)
        finally:
            # As SageMaker's MPI runner: tell the other hosts, which then end (a failure here
            # fails the job and stops them anyway).
            for host in self._hosts[1:]:
                subprocess.run(["ssh", host, "touch", MPI_DONE_FILE], check=False, timeout=60)

    def _python_command(self) -> list[str]:
        python = list(super()._python_command())
        # An uncaught exception in one rank then aborts them all.
        return [*python, "-m", "mpi4py"] if self._mpi4py else python


class MpiWorker(process.ProcessRunner):
    """Another host of an mpirun job: sshd until the first host says mpirun has ended."""

    def run(self, wait: bool = True, capture_error: bool = False) -> None:
        sshd = start_sshd()
        done = Path(MPI_DONE_FILE)
        try:
            logger.info("openmaker: sshd started; waiting for mpirun on the first host")
            while not done.exists():
                if sshd.poll() is not None:
                    raise RuntimeError(f"sshd ended with status {sshd.returncode}")
                time.sleep(0.2)  # the first host writes it over ssh: nothing here to wait on
            logger.info("openmaker: mpirun on the first host has ended")
        finally:
            sshd.terminate()
            sshd.wait()


if __name__ == "__main__":
    main()
