"""The serving instances' utilization, as SageMaker publishes an endpoint's: namespace
`/aws/sagemaker/Endpoints`, dimensions `EndpointName` and `VariantName`, metrics
CPUUtilization, MemoryUtilization, DiskUtilization (and the GPU ones where an instance has
GPUs), each measured as any instance's is (openmaker/runtime/usage.py).

Every `every` seconds each instance with a container adds one sample to its variant's series
(serving/metrics.py keeps them), so a period's Average is over the variant's instances. A
transform job's instances are measured alike, each its own series (namespace
`/aws/sagemaker/TransformJobs`, dimension `Host` = `<job>/<instance-id>`). An instance on
another node (Ray) is measured there by its agent, asked each time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from openmaker.serving.instance import Instance
from openmaker.serving.metrics import HOST_NAMESPACES, INSTANCE_NAMESPACE, InvocationMetrics


class UsageWatch:
    def __init__(
        self,
        endpoint: str,
        every: float,
        instances: Callable[[], list[Instance]],
        metrics: InvocationMetrics,
        namespace: str = INSTANCE_NAMESPACE,
    ) -> None:
        """`endpoint`: the endpoint (or, with a namespace of HOST_NAMESPACES, the job)."""
        self.endpoint, self.every, self.instances = endpoint, every, instances
        self.metrics, self.namespace = metrics, namespace
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="usage-watch", daemon=True)

    def start(self) -> UsageWatch:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop, with a last sample (of what is still running)."""
        self._stop.set()
        self._thread.join(timeout=10)
        self.sample()

    def _loop(self) -> None:
        self.sample()  # the first sample's CPU counts from here
        while not self._stop.wait(self.every):
            self.sample()

    def sample(self) -> None:
        for instance in list(self.instances()):
            try:
                values = instance.usage()
            except Exception:  # a metric never fails the endpoint it measures
                continue
            if values:
                plan = instance.plan
                series = plan.id if self.namespace in HOST_NAMESPACES else plan.variant
                self.metrics.add(self.endpoint, series, sorted(values.items()), self.namespace)
