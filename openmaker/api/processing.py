"""The processing job operations of the SageMaker API (openmaker/processing/service.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from openmaker.processing.query import PAGES, ProcessingQuery
from openmaker.processing.service import ProcessingJobs

if TYPE_CHECKING:
    from openmaker.api.operations import Handlers


class ProcessingHandlers:
    def __init__(self, jobs: ProcessingJobs) -> None:
        self.jobs = jobs

    def register(self, handlers: Handlers) -> None:
        for operation, handler in {
            "CreateProcessingJob": self.create,
            "DescribeProcessingJob": self.describe,
            "ListProcessingJobs": self.list,
            "StopProcessingJob": self.stop,
        }.items():
            handlers.register("sagemaker", operation, handler)

    def create(self, params: dict[str, Any]) -> dict[str, Any]:
        return self.jobs.create(params)

    def describe(self, params: dict[str, Any]) -> dict[str, Any]:
        return self.jobs.describe(params["ProcessingJobName"])

    def list(self, params: dict[str, Any]) -> dict[str, Any]:
        summaries, token = self.jobs.search(ProcessingQuery.of(params))
        result: dict[str, Any] = {"ProcessingJobSummaries": summaries}
        if token:
            result[PAGES.output_token] = token
        return result

    def stop(self, params: dict[str, Any]) -> dict[str, Any]:
        self.jobs.stop(params["ProcessingJobName"])
        return {}
