"""A training host's utilization while its code runs, as SageMaker publishes it for a training
job's instances (namespace `/aws/sagemaker/TrainingJobs`, dimension `Host`): what its container
uses of its share of the machine, measured as any instance's is (openmaker/runtime/usage.py).

A sample is taken every `SAMPLE_SECONDS` and once more when the code has ended.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from openmaker.runtime.usage import SAMPLE_SECONDS, Measured, UsageSampler
from openmaker.training.host.events import Emit, SystemMetrics
from openmaker.training.host.limits import host_cgroup
from openmaker.training.host.spec import HostSpec


@contextlib.contextmanager
def sampling(spec: HostSpec, emit: Emit, every: float = SAMPLE_SECONDS) -> Iterator[None]:
    """Sample the host's utilization in a thread while the body runs, and once at its end."""
    sampler = _Sampler(spec, emit)
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            sampler.sample()

    thread = threading.Thread(target=loop, name=f"metrics-{spec.host_name}", daemon=True)
    sampler.start()
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        sampler.sample()


class _Sampler:
    def __init__(self, spec: HostSpec, emit: Emit) -> None:
        self.spec, self.emit = spec, emit
        resources = spec.resources
        self.measured = Measured(
            (host_cgroup(spec),),
            resources.memory if resources else None,
            spec.work_dir,
            resources.gpus if resources else (),
        )
        self.usage = UsageSampler()

    def start(self) -> None:
        self.usage.start(self.measured)

    def sample(self) -> None:
        try:
            values = self.usage.sample(self.measured)
        except Exception:  # a metric never fails the job it measures
            return
        if values:
            self.emit(SystemMetrics(self.spec.host_name, int(time.time() * 1000), values))
