"""An instance's GPU utilization, as every kind measures it (openmaker/runtime/usage.py): read
through `nvidia-smi` for the instance's GPUs only, summed over them as SageMaker sums them. The
machine has no GPU: tests/fake_gpu's stand-in answers as one with two."""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

from openmaker.runtime.usage import Measured, UsageSampler

FAKE_GPU = Path(__file__).parent / "fake_gpu"


def test_gpu_utilization_is_summed_over_the_instance_gpus(tmp_path: Path) -> None:
    path = f"{FAKE_GPU}{os.pathsep}{os.environ.get('PATH', '')}"
    with mock.patch.dict(os.environ, {"PATH": path}):
        two = UsageSampler().sample(Measured((), None, tmp_path, ("0", "1")))
        none = UsageSampler().sample(Measured((), None, tmp_path, ()))
    assert two["GPUUtilization"] == 60.0  # 30 % each
    assert two["GPUMemoryUtilization"] == 50.0  # a quarter of each one's memory
    assert 0 < two["DiskUtilization"] <= 100
    # No GPU given: no GPU metric (never a 0), nor any a cgroup would give.
    assert set(none) == {"DiskUtilization"}
