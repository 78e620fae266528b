"""The operations the server answers, by service: request members in, response members out.

Each handler gets the request as Python values (already checked against the operation's input
shape) and returns the output shape's members; the protocol layer does the rest. Handlers sit in
a registry keyed by service and operation name, into which each resource registers its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from openmaker.algorithms.packages import ModelPackages
from openmaker.algorithms.service import Algorithms
from openmaker.algorithms.store import Store, taggable_tables
from openmaker.algorithms.validation import Validation
from openmaker.api.algorithms import AlgorithmHandlers, ModelPackageHandlers
from openmaker.api.processing import ProcessingHandlers
from openmaker.api.serving import ServingHandlers
from openmaker.api.transform import TransformHandlers
from openmaker.jobs.cloudwatch import LogQueries, Window
from openmaker.jobs.tags import Tags
from openmaker.processing.service import ProcessingJobs
from openmaker.resources import KINDS, log_groups
from openmaker.serving.metric_reads import EndpointMetricReads
from openmaker.serving.proxy import Invoker
from openmaker.serving.service import Serving, taggable
from openmaker.settings import Settings
from openmaker.shapes.locations import LocalPaths
from openmaker.shapes.model import operation_model
from openmaker.shapes.paging import paginator
from openmaker.training.metric_reads import MetricReads
from openmaker.training.query import JobQuery
from openmaker.training.service import TrainingJobs
from openmaker.transform.service import TransformJobs

Handler = Callable[[dict[str, Any]], dict[str, Any]]
# Answers on the server's event loop, without blocking it for long, or returns None to leave
# the request to the operation's Handler (in a worker thread).
QuickHandler = Callable[[dict[str, Any]], dict[str, Any] | None]
SWEEP_SECONDS = 5.0


class Handlers:
    """The registry: each operation's handler, by service (botocore's name) and operation."""

    def __init__(self) -> None:
        self._services: dict[str, dict[str, Handler]] = {}
        self._quick: dict[str, dict[str, QuickHandler]] = {}

    def register(self, service: str, operation: str, handler: Handler) -> None:
        operation_model(operation, service)  # one the model does not name is refused here
        handlers = self._services.setdefault(service, {})
        if operation in handlers:
            raise ValueError(f"{service} operation {operation} has a handler already")
        handlers[operation] = handler

    def register_quick(self, service: str, operation: str, quick: QuickHandler) -> None:
        """`quick` is tried first for `operation`, which must have its handler already."""
        if operation not in self._services.get(service, {}):
            raise ValueError(f"{service} operation {operation} has no handler to fall back on")
        self._quick.setdefault(service, {})[operation] = quick

    def of(self, service: str) -> dict[str, Handler]:
        return dict(self._services.get(service, {}))

    def quick_of(self, service: str) -> dict[str, QuickHandler]:
        return dict(self._quick.get(service, {}))


class Backend:
    """What the handlers work on; one per server process."""

    def __init__(self, settings: Settings) -> None:
        # A request through the API names local paths only where the machine's owner allows.
        local = LocalPaths.under(settings.file_roots, settings.home)
        self.jobs = TrainingJobs(settings, local=local)
        self.metrics = MetricReads.of(settings)
        self.endpoint_metrics = EndpointMetricReads.of(settings)
        self.handlers = Handlers()
        self.serving = Serving(settings, local)
        self.invoker = Invoker(self.serving.endpoints, settings.region, settings.account_id)
        TrainingJobHandlers(self.jobs).register(self.handlers)
        ServingHandlers(self.serving).register(self.handlers)
        self.processing = ProcessingJobs(settings, local=local)
        ProcessingHandlers(self.processing).register(self.handlers)
        self.transforms = TransformJobs(settings, self.serving.models, self.jobs.executor)
        TransformHandlers(self.transforms).register(self.handlers)
        self.algorithms = Algorithms(Store.of(settings), local)
        packages = ModelPackages(Store.of(settings), self.algorithms)
        self.validation = Validation(
            self.algorithms, packages, self.jobs, self.serving.models, self.transforms
        )
        AlgorithmHandlers(self.algorithms, self.validation).register(self.handlers)
        ModelPackageHandlers(packages, self.validation).register(self.handlers)
        tags = Tags.of(settings, KINDS, {**taggable(), **taggable_tables()})
        TagHandlers(tags).register(self.handlers)
        self.logs = LogQueries.of(settings, log_groups())
        LogHandlers(self.logs).register(self.handlers)

    def watch(self, every: float = SWEEP_SECONDS) -> None:
        """Sweep the jobs now and then: a lost worker is noticed, and waiting jobs start, even
        when no client asks about them."""
        self.jobs.watch(every)
        self.validation.watch(every)

    def close(self) -> None:
        self.jobs.close()
        self.validation.close()


class TrainingJobHandlers:
    def __init__(self, jobs: TrainingJobs) -> None:
        self.jobs = jobs

    def register(self, handlers: Handlers) -> None:
        for operation, handler in {
            "CreateTrainingJob": self.create,
            "DescribeTrainingJob": self.describe,
            "ListTrainingJobs": self.list,
            "StopTrainingJob": self.stop,
            "UpdateTrainingJob": self.update,
            "Search": self.search,
        }.items():
            handlers.register("sagemaker", operation, handler)
        # Clients poll Describe most of all; an ended job's answer is kept.
        handlers.register_quick("sagemaker", "DescribeTrainingJob", self.describe_ended)

    def create(self, params: dict[str, Any]) -> dict[str, Any]:
        return self.jobs.create(params)

    def describe(self, params: dict[str, Any]) -> dict[str, Any]:
        return self.jobs.describe(params["TrainingJobName"])

    def describe_ended(self, params: dict[str, Any]) -> dict[str, Any] | None:
        return self.jobs.describe_ended(params["TrainingJobName"])

    def list(self, params: dict[str, Any]) -> dict[str, Any]:
        pages = paginator("ListTrainingJobs")
        query = JobQuery.of(params, warm_pool_status=params.get("WarmPoolStatusEquals"))
        summaries, token = self.jobs.search(query)
        result: dict[str, Any] = {"TrainingJobSummaries": summaries}
        if token:
            result[pages.output_token] = token
        return result

    def stop(self, params: dict[str, Any]) -> dict[str, Any]:
        self.jobs.stop(params["TrainingJobName"])
        return {}

    def update(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"TrainingJobArn": self.jobs.update(params)}

    def search(self, params: dict[str, Any]) -> dict[str, Any]:
        return self.jobs.search_records(params)


class TagHandlers:
    def __init__(self, tags: Tags) -> None:
        self.tags = tags

    def register(self, handlers: Handlers) -> None:
        handlers.register("sagemaker", "AddTags", self.add)
        handlers.register("sagemaker", "ListTags", self.list)
        handlers.register("sagemaker", "DeleteTags", self.delete)

    def add(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"Tags": self.tags.add(params["ResourceArn"], params["Tags"])}

    def list(self, params: dict[str, Any]) -> dict[str, Any]:
        pages = paginator("ListTags")
        return self.tags.list(params["ResourceArn"], pages.limit(params, 50), pages.token(params))

    def delete(self, params: dict[str, Any]) -> dict[str, Any]:
        self.tags.delete(params["ResourceArn"], params["TagKeys"])
        return {}


class LogHandlers:
    """CloudWatch Logs, as far as the SageMaker clients read a job's logs."""

    def __init__(self, logs: LogQueries) -> None:
        self.logs = logs

    def register(self, handlers: Handlers) -> None:
        handlers.register("logs", "DescribeLogGroups", self.describe_log_groups)
        handlers.register("logs", "DescribeLogStreams", self.describe_log_streams)
        handlers.register("logs", "GetLogEvents", self.get_log_events)
        handlers.register("logs", "FilterLogEvents", self.filter_log_events)

    def describe_log_groups(self, params: dict[str, Any]) -> dict[str, Any]:
        prefix = params.get("logGroupNamePrefix") or ""
        groups = [
            {"logGroupName": g, "creationTime": 0, "storedBytes": 0}
            for g in self.logs.group_names(prefix)
        ]
        return {"logGroups": groups}

    def describe_log_streams(self, params: dict[str, Any]) -> dict[str, Any]:
        pages = paginator("DescribeLogStreams", "logs")
        return self.logs.describe_log_streams(
            _group(params),
            params.get("logStreamNamePrefix"),
            params.get("orderBy", "LogStreamName"),
            params.get("descending", False),
            pages.limit(params, 50),
            pages.token(params),
        )

    def get_log_events(self, params: dict[str, Any]) -> dict[str, Any]:
        return self.logs.get_log_events(
            _group(params),
            params["logStreamName"],
            Window(params.get("startTime"), params.get("endTime")),
            params.get("limit", 10000),
            params.get("nextToken"),
            params.get("startFromHead", False),
        )

    def filter_log_events(self, params: dict[str, Any]) -> dict[str, Any]:
        pages = paginator("FilterLogEvents", "logs")
        return self.logs.filter_log_events(
            _group(params),
            params.get("logStreamNames"),
            params.get("logStreamNamePrefix"),
            Window(params.get("startTime"), params.get("endTime")),
            params.get("filterPattern"),
            pages.limit(params, 10000),
            pages.token(params),
        )


def _group(params: dict[str, Any]) -> str:
    """`logGroupName`, or `logGroupIdentifier` (a name or an ARN naming one)."""
    if params.get("logGroupName"):
        return str(params["logGroupName"])
    identifier = str(params.get("logGroupIdentifier") or "")
    return identifier.split(":log-group:", 1)[-1].removesuffix(":*")
