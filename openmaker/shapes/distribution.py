"""The `distribution` a SageMaker SDK asks for, read from the hyperparameters it sets.

The SDK turns `distribution={...}` into hyperparameters (`sagemaker_mpi_enabled`, …, values
JSON-encoded); SageMaker's framework containers pick their launcher from them. openmaker stands
in for those containers (script mode), so it reads the same names. A local-folder image is the
user's own container: its hyperparameters are its business, never read here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

MPI = "sagemaker_mpi_enabled"
MPI_PROCESSES_PER_HOST = "sagemaker_mpi_num_of_processes_per_host"
MPI_CUSTOM_OPTIONS = "sagemaker_mpi_custom_mpi_options"
TORCH_DISTRIBUTED = "sagemaker_torch_distributed_enabled"
PYTORCH_DDP = "sagemaker_pytorch_ddp_enabled"
# SDK v2 sends `pytorchddp` as smdistributed's data parallel (with smddprun where installed).
DATAPARALLEL = "sagemaker_distributed_dataparallel_enabled"
DATAPARALLEL_CUSTOM_OPTIONS = "sagemaker_distributed_dataparallel_custom_mpi_options"
PARAMETER_SERVER = "sagemaker_parameter_server_enabled"
MULTI_WORKER_MIRRORED = "sagemaker_multi_worker_mirrored_strategy_enabled"
PYTORCH_XLA = "sagemaker_pytorch_xla_multi_worker_enabled"
MODEL_PARALLEL = "mp_parameters"
INSTANCE_GROUPS = "sagemaker_distribution_instance_groups"

# The launchers, as the containers name their runners.
PROCESS = "process"
MPIRUN = "mpi"
TORCHRUN = "torch_distributed"
TF_CONFIG = "tf_config"

# What cannot run here, and why, for a person.
_REFUSED = {
    MODEL_PARALLEL: "SageMaker's model parallel library (smdistributed.modelparallel) exists "
    "only in SageMaker's GPU containers",
    PYTORCH_XLA: "PyTorch/XLA distributed training needs Trainium or SageMaker Training Compiler",
    INSTANCE_GROUPS: "heterogeneous clusters are not supported by openmaker",
}


@dataclass(frozen=True)
class Strategy:
    launcher: str
    # Given by the request; None: as the container decides (GPUs, else 1).
    processes_per_host: int | None = None
    custom_mpi_options: str = ""
    # The TF_CONFIG flavour: parameter servers beside the workers, or workers only.
    parameter_server: bool = False


def value(hyperparameters: Mapping[str, str], name: str) -> Any:
    """A hyperparameter as the SDK meant it: JSON-decoded when it decodes, else the text."""
    raw = hyperparameters.get(name)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def enabled(hyperparameters: Mapping[str, str], name: str) -> bool:
    found = value(hyperparameters, name)
    return found is True or (isinstance(found, str) and found.lower() == "true")


def strategy_of(hyperparameters: Mapping[str, str] | None) -> Strategy:
    """The launcher, in the order SageMaker's PyTorch container tries them."""
    given = hyperparameters or {}
    per_host = _count(value(given, MPI_PROCESSES_PER_HOST))
    if enabled(given, MPI):
        options = value(given, MPI_CUSTOM_OPTIONS)
        return Strategy(MPIRUN, per_host, options if isinstance(options, str) else "")
    if enabled(given, PYTORCH_DDP) or enabled(given, DATAPARALLEL):
        options = value(given, DATAPARALLEL_CUSTOM_OPTIONS)
        return Strategy(MPIRUN, per_host, options if isinstance(options, str) else "")
    if enabled(given, TORCH_DISTRIBUTED):
        return Strategy(TORCHRUN, per_host)
    if enabled(given, PARAMETER_SERVER):
        return Strategy(TF_CONFIG, parameter_server=True)
    if enabled(given, MULTI_WORKER_MIRRORED):
        return Strategy(TF_CONFIG)
    return Strategy(PROCESS)


def distribution_problems(request: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(hyperparameter, why) for each distribution openmaker's stand-in containers cannot run."""
    image = str((request.get("AlgorithmSpecification") or {}).get("TrainingImage") or "")
    if image.startswith(("/", "file:")):
        return  # the user's own container
    given = request.get("HyperParameters") or {}
    for name, why in _REFUSED.items():
        found = value(given, name)
        if found not in (None, False, "", {}, [], "false", "False"):
            yield name, why
    count = value(given, MPI_PROCESSES_PER_HOST)
    if count is not None and _count(count) is None:
        yield MPI_PROCESSES_PER_HOST, "Member must be a whole number of processes, at least 1"


def _count(found: Any) -> int | None:
    text = str(found) if isinstance(found, int | str) and not isinstance(found, bool) else ""
    return int(text) if text.isdigit() and int(text) >= 1 else None
