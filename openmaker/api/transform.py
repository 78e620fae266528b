"""The SageMaker operations of batch transform jobs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from openmaker.transform.service import TransformJobs

if TYPE_CHECKING:
    from openmaker.api.operations import Handlers


class TransformHandlers:
    def __init__(self, jobs: TransformJobs) -> None:
        self.jobs = jobs

    def register(self, handlers: Handlers) -> None:
        for operation, handler in {
            "CreateTransformJob": self.jobs.create,
            "DescribeTransformJob": lambda p: self.jobs.describe(p["TransformJobName"]),
            "ListTransformJobs": self.jobs.list,
            "StopTransformJob": self.stop,
        }.items():
            handlers.register("sagemaker", operation, handler)

    def stop(self, params: dict[str, Any]) -> dict[str, Any]:
        self.jobs.stop(params["TransformJobName"])
        return {}
