"""The console's endpoint pages, as JSON-ready data: the endpoints table, an endpoint (its
variants, instances, recent invocation metrics and log tail), and an invocation made from the
page, through the same invoker the runtime API's InvokeEndpoint uses.

A container's answer goes to the page as text (decoded, cut to ANSWER_CHARS): the page shows
it as a text node, never as markup, whatever its Content-Type says.
"""

from __future__ import annotations

import time
from typing import Any

from openmaker.api.console import log_tail
from openmaker.api.console.paging import check_page, list_params
from openmaker.api.console.shown import ms, plain
from openmaker.jobs.cloudwatch import LogQueries
from openmaker.serving import metrics
from openmaker.serving.kind import log_group
from openmaker.serving.metric_reads import EndpointMetricReads, EndpointSeries
from openmaker.serving.proxy import InvocationError, Invoker
from openmaker.serving.service import Serving
from openmaker.shapes.errors import ValidationException

# What of an answer the page is given to show; the rest is counted, not sent.
ANSWER_CHARS = 64 * 1024
# What the form may send (the runtime API takes up to 6 MiB; a page's text box far less).
MAX_BODY_BYTES = 1024 * 1024
STATUSES = (
    "OutOfService",
    "Creating",
    "Updating",
    "SystemUpdating",
    "RollingBack",
    "InService",
    "Deleting",
    "Failed",
    "UpdateRollbackFailed",
)
# The charts: the last CHART_MINUTES in periods of CHART_PERIOD_SECONDS; each chart one metric
# and statistic, a line per variant.
CHART_MINUTES = 30
CHART_PERIOD_SECONDS = 10
Chart = tuple[str, tuple[str, ...], str]  # title, the metrics it sums, statistic
CHARTS: tuple[Chart, ...] = (
    (f"Invocations (per {CHART_PERIOD_SECONDS} s)", (metrics.INVOCATIONS,), "Sum"),
    (
        f"Invocation errors, 4XX + 5XX (per {CHART_PERIOD_SECONDS} s)",
        (metrics.ERRORS_4XX, metrics.ERRORS_5XX),
        "Sum",
    ),
    ("ModelLatency (average, µs)", (metrics.MODEL_LATENCY,), "Average"),
    ("OverheadLatency (average, µs)", (metrics.OVERHEAD_LATENCY,), "Average"),
)
# The instances' utilization (`/aws/sagemaker/Endpoints`), averaged over a variant's instances.
USAGE_CHARTS: tuple[Chart, ...] = (
    ("CPUUtilization (average over instances, %)", ("CPUUtilization",), "Average"),
    ("MemoryUtilization (average over instances, %)", ("MemoryUtilization",), "Average"),
)


class EndpointViews:
    def __init__(
        self,
        serving: Serving,
        invoker: Invoker,
        logs: LogQueries,
        metric_reads: EndpointMetricReads,
    ) -> None:
        self.serving, self.invoker, self.logs = serving, invoker, logs
        self.metric_reads = metric_reads

    def table(
        self,
        name: str | None,
        status: str | None,
        sort: str,
        descending: bool,
        limit: int,
        token: str | None,
    ) -> dict[str, Any]:
        """One page of the endpoints table, and the token of the next page."""
        check_page(status, STATUSES, sort, ("CreationTime", "Name"), limit)
        params = list_params(name, status, sort, descending, limit, token)
        found = self.serving.endpoints.list(params)
        return {
            "endpoints": [self._row(e["EndpointName"]) for e in found["Endpoints"]],
            "next": found.get("NextToken"),
        }

    def _row(self, name: str) -> dict[str, Any]:
        described = self.serving.endpoints.describe(name)
        variants = described.get("ProductionVariants", [])
        return {
            "name": name,
            "status": described["EndpointStatus"],
            "variants": [v["VariantName"] for v in variants],
            "instances": sum(int(v.get("CurrentInstanceCount", 0)) for v in variants),
            "desiredInstances": sum(int(v.get("DesiredInstanceCount", 0)) for v in variants),
            "created": ms(described["CreationTime"]),
            "modified": ms(described.get("LastModifiedTime")),
            "failureReason": described.get("FailureReason"),
        }

    def endpoint(self, name: str) -> dict[str, Any]:
        """DescribeEndpoint's answer (times as epoch ms), its instances, its log streams."""
        described = self.serving.endpoints.describe(name)
        variants = [v["VariantName"] for v in described.get("ProductionVariants", [])]
        return {
            "endpoint": plain(described),
            "instances": self.serving.endpoints.instances(name),
            "logStreams": log_tail.stream_names(self.logs, log_group(name)),
            "invocationMetrics": self.charts(name, variants),
            "usageMetrics": self.charts(name, variants, USAGE_CHARTS, metrics.INSTANCE_NAMESPACE),
        }

    def charts(
        self,
        name: str,
        variants: list[str],
        charts: tuple[Chart, ...] = CHARTS,
        namespace: str = metrics.NAMESPACE,
    ) -> dict[str, dict[str, list[list[float]]]]:
        """{chart title: {variant: [[period start ms, value], ...]}} over the last
        CHART_MINUTES; a chart with no value yet has no line."""
        period = CHART_PERIOD_SECONDS * 1000
        end = int(time.time() * 1000)
        start = end - CHART_MINUTES * 60_000
        start -= start % period
        found: dict[str, dict[str, list[list[float]]]] = {}
        for title, names, stat in charts:
            lines: dict[str, list[list[float]]] = {}
            for variant in variants:
                summed: dict[int, float] = {}
                for metric in names:
                    series = EndpointSeries(metric, name, variant, namespace)
                    for bucket in self.metric_reads.buckets(series, start, end, period):
                        value = bucket.statistic(stat) or 0.0
                        summed[bucket.start] = summed.get(bucket.start, 0.0) + value
                if summed:
                    lines[variant] = [[t, v] for t, v in sorted(summed.items())]
            found[title] = lines
        return found

    def logs_of(self, name: str, after: int) -> dict[str, Any]:
        """The lines of the endpoint's log streams after the record `after`."""
        self.serving.endpoints.describe(name)  # an unknown endpoint is refused, not empty
        group = log_group(name)
        return log_tail.tail(self.logs, group, log_tail.stream_names(self.logs, group), after)

    def invoke(self, name: str, request: Any) -> dict[str, Any]:
        """One invocation from the page's form: {body, contentType, accept?} in; the answer
        (or why there is none) out, as text."""
        if not isinstance(request, dict):
            raise ValidationException("The request must be a JSON object.")
        body, content_type = request.get("body"), request.get("contentType")
        accept = request.get("accept") or None
        if not isinstance(body, str):
            raise ValidationException("body must be a string")
        if not isinstance(content_type, str) or not 0 < len(content_type) <= 1024:
            raise ValidationException("contentType must be a string of 1 to 1024 characters")
        if accept is not None and (not isinstance(accept, str) or len(accept) > 1024):
            raise ValidationException("accept must be a string of at most 1024 characters")
        data = body.encode()
        if len(data) > MAX_BODY_BYTES:
            raise ValidationException(f"body must be at most {MAX_BODY_BYTES} bytes")
        headers = {"Content-Type": content_type, **({"Accept": accept} if accept else {})}
        self.serving.endpoints.describe(name)  # an unknown endpoint says so as the API does
        try:
            answer = self.invoker.invoke(name, data, headers, None)
        except InvocationError as exc:
            return {"ok": False, "error": exc.code, "message": exc.message[:ANSWER_CHARS]}
        text = answer.body.decode("utf-8", "replace")
        return {
            "ok": True,
            "variant": answer.variant,
            "contentType": answer.content_type,
            "bytes": len(answer.body),
            "body": text[:ANSWER_CHARS],
            "truncated": len(text) > ANSWER_CHARS,
        }
