"""CloudWatch's metric reads: GetMetricStatistics, GetMetricData, ListMetrics, over training
jobs' metrics (`/aws/sagemaker/TrainingJobs`), endpoints' invocation metrics (`AWS/SageMaker`)
and their instances' utilization (`/aws/sagemaker/Endpoints`; serving/metrics.py).

botocore speaks CloudWatch's JSON protocol (the model lists smithy-rpc-v2-cbor, json and query;
botocore takes json first): `X-Amz-Target: GraniteServiceVersion20100801.<Operation>`, JSON
1.0, signed for `monitoring`. The service is "query compatible": an error names its shape in
`__type` and its query-era code (`InvalidParameterValue`, ...) in `x-amzn-query-error`, which
is the code clients see. Both come from the model's error shapes.

Periods are laid as CloudWatch lays them: from the start time rounded down (to the period when
it is under a minute, else to the minute, 5 minutes or hour by the start's age), each period
including its start. Data is never aged out here: every stored value is served.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from openmaker.api.operations import Handler
from openmaker.serving.metric_reads import (
    NAMESPACES,
    EndpointMetricReads,
    EndpointSeries,
    StatisticSet,
    endpoint_series_of,
)
from openmaker.shapes.errors import ServiceError
from openmaker.shapes.model import service_model
from openmaker.shapes.validate import error_message, shape_problems
from openmaker.training.metric_reads import MetricReads
from openmaker.training.metric_series import (
    BASIC_STATISTICS,
    NAMESPACE,
    Bucket,
    Series,
    percentile_of,
    series_of,
)

SERVICE = "cloudwatch"
TARGET_PREFIX = "GraniteServiceVersion20100801"
CONTENT_TYPE = "application/x-amz-json-1.0"
# What CloudWatch answers at most: datapoints of one GetMetricStatistics, metrics of one
# ListMetrics page, datapoints of one GetMetricData page (its MaxDatapoints default).
MAX_DATAPOINTS = 1440
LIST_PAGE = 500
MAX_DATA_POINTS = 100_800
SHORT_PERIODS = (1, 5, 10, 20, 30)
RECENT = timedelta(hours=3)  # ListMetrics' RecentlyActive=PT3H
_ID = re.compile(r"[a-z][a-zA-Z0-9_]*")
_NULL = re.compile(r"Value null at '([^']*)' failed to satisfy constraint")
# What a request can name: a training job's series or an endpoint variant's.
AnySeries = Series | EndpointSeries


class CloudWatchError(ServiceError):
    """An error shape of CloudWatch's model, with the code its clients see."""

    def __init__(self, shape: str, message: str) -> None:
        super().__init__(message)
        error = service_model(SERVICE).shape_for(shape).metadata.get("error", {})
        self.code = shape  # `__type`
        self.query_code = str(error.get("code", shape))
        self.http_status = int(error.get("httpStatusCode", 400))


def invalid(message: str) -> CloudWatchError:
    return CloudWatchError("InvalidParameterValueException", message)


def missing(member: str) -> CloudWatchError:
    message = f"The parameter {member} is required."
    return CloudWatchError("MissingRequiredParameterException", message)


def combination(message: str) -> CloudWatchError:
    return CloudWatchError("InvalidParameterCombinationException", message)


def validate(operation: str, params: dict[str, Any], service: str = SERVICE) -> None:
    """The model's constraints, worded as CloudWatch words them: a missing member is
    MissingParameter naming it, any other problem InvalidParameterValue."""
    shape = service_model(service).operation_model(operation).input_shape
    problems = shape_problems(shape, params)
    for problem in problems:
        if found := _NULL.match(problem):
            raise missing(found.group(1))
    if problems:
        raise invalid(error_message(problems))


class CloudWatchMetrics:
    def __init__(
        self, reads: MetricReads, account: str, endpoint_reads: EndpointMetricReads
    ) -> None:
        self.reads, self.account, self.endpoint_reads = reads, account, endpoint_reads

    def handlers(self) -> dict[str, Handler]:
        return {
            "GetMetricStatistics": self.get_metric_statistics,
            "GetMetricData": self.get_metric_data,
            "ListMetrics": self.list_metrics,
        }

    def get_metric_statistics(self, params: dict[str, Any]) -> dict[str, Any]:
        statistics = params.get("Statistics") or []
        extended = params.get("ExtendedStatistics") or []
        if bool(statistics) == bool(extended):
            raise combination(
                "Exactly one of the parameters Statistics and ExtendedStatistics must be given."
            )
        for statistic in extended:
            if percentile_of(statistic) is None:
                raise invalid(
                    f"The value {statistic} for parameter ExtendedStatistics is not supported: "
                    "give percentiles between p0 and p100, such as p90 or p99.9."
                )
        period = _period(params["Period"], "Period")
        start, end = _window(params["StartTime"], params["EndTime"], period)
        wanted = math.ceil((end - start) / (period * 1000))
        if wanted > MAX_DATAPOINTS:
            raise combination(
                f"You have requested up to {wanted:,} datapoints, which exceeds the limit of "
                f"{MAX_DATAPOINTS:,}. You may reduce the datapoints requested by increasing "
                "Period, or decreasing the time range."
            )
        series = _series_of(params["Namespace"], params["MetricName"], params.get("Dimensions", []))
        found = self._buckets(series, params.get("Unit"), start, end, period, bool(extended))
        datapoints = []
        for bucket in found:
            point: dict[str, Any] = {"Timestamp": _time(bucket.start), "Unit": _unit(series)}
            for name in statistics:
                point[name] = bucket.statistic(name)
            if extended:
                point["ExtendedStatistics"] = {p: bucket.statistic(p) for p in extended}
            datapoints.append(point)
        return {"Label": params["MetricName"], "Datapoints": datapoints}

    def get_metric_data(self, params: dict[str, Any]) -> dict[str, Any]:
        queries = params["MetricDataQueries"]
        if not queries:
            raise missing("MetricDataQueries")
        plans = [_plan(query, index) for index, query in enumerate(queries, 1)]
        ids = [plan["Id"] for plan in plans]
        if duplicate := next((i for i in ids if ids.count(i) > 1), None):
            raise invalid(f"The value {duplicate} for parameter Id is used by more than one query.")
        first, skip = _data_token(params.get("NextToken"), len(plans))
        room = params.get("MaxDatapoints") or MAX_DATA_POINTS
        ascending = params.get("ScanBy") == "TimestampAscending"
        periods = [plan["Period"] for plan in plans]
        start, end = _window(params["StartTime"], params["EndTime"], min(periods))
        results: list[dict[str, Any]] = []
        token = None
        for index in range(first, len(plans)):
            plan = plans[index]
            if not plan["ReturnData"]:
                continue
            stat = plan["Stat"]
            found = self._buckets(
                plan["Series"],
                plan["Unit"],
                _aligned(start, plan["Period"]),
                end,
                plan["Period"],
                percentile_of(stat) is not None,
            )
            if not ascending:
                found.reverse()
            points = found[skip if index == first else 0 :]
            kept = points[:room]
            room -= len(kept)
            result: dict[str, Any] = {
                "Id": plan["Id"],
                "Label": plan["Label"],
                "Timestamps": [_time(b.start) for b in kept],
                "Values": [b.statistic(stat) for b in kept],
                "StatusCode": "Complete" if len(kept) == len(points) else "PartialData",
                "Messages": [],
            }
            results.append(result)
            if len(kept) < len(points):
                done = len(found) - len(points) + len(kept)
                token = f"{index}/{done}"
                break
        answer: dict[str, Any] = {"MetricDataResults": results, "Messages": []}
        if token:
            answer["NextToken"] = token
        return answer

    def list_metrics(self, params: dict[str, Any]) -> dict[str, Any]:
        namespace = params.get("Namespace")
        since = None
        if params.get("RecentlyActive"):
            since = int((datetime.now(UTC) - RECENT).timestamp() * 1000)
        found: list[AnySeries] = []
        if namespace in (None, NAMESPACE):
            found += self.reads.all_series(since)
        if namespace is None or namespace in NAMESPACES:
            found += self.endpoint_reads.all_series(since, namespace)
        name = params.get("MetricName")
        filters = params.get("Dimensions") or []
        found = [s for s in found if (name is None or s.name == name) and _passes(s, filters)]
        offset = _list_token(params.get("NextToken"))
        page = found[offset : offset + LIST_PAGE]
        answer: dict[str, Any] = {"Metrics": [s.listing() for s in page]}
        if params.get("IncludeLinkedAccounts"):
            answer["OwningAccounts"] = [self.account] * len(page)
        if offset + LIST_PAGE < len(found):
            answer["NextToken"] = str(offset + LIST_PAGE)
        return answer

    def _buckets(
        self,
        series: AnySeries | None,
        unit: str | None,
        start: int,
        end: int,
        period: int,
        percentiles: bool,
    ) -> list[Bucket | StatisticSet]:
        if series is None or (unit is not None and unit != series.unit):
            return []  # CloudWatch has no data for it: no error either
        if isinstance(series, EndpointSeries):
            if percentiles:
                return []  # statistic sets keep no values to rank
            return [*self.endpoint_reads.buckets(series, start, end, period * 1000)]
        return [*self.reads.buckets(series, start, end, period * 1000, percentiles)]


def _plan(query: dict[str, Any], index: int) -> dict[str, Any]:
    """A GetMetricDataQuery checked, with what answering it takes."""
    where = f"MetricDataQueries.member.{index}"
    if not _ID.fullmatch(query["Id"]):
        raise invalid(
            f"The value {query['Id']} for parameter {where}.Id is not valid: it must start "
            "with a lowercase letter and hold only letters, digits and underscores."
        )
    if query.get("Expression"):
        raise invalid(
            f"The parameter {where}.Expression is not supported: openmaker serves MetricStat "
            "queries, not metric math or Metrics Insights expressions."
        )
    stat = query.get("MetricStat")
    if stat is None:
        raise missing(f"{where}.MetricStat")
    if stat["Stat"] not in BASIC_STATISTICS and percentile_of(stat["Stat"]) is None:
        raise invalid(
            f"The value {stat['Stat']} for parameter {where}.MetricStat.Stat is not supported: "
            f"give one of {', '.join(BASIC_STATISTICS)} or a percentile such as p90."
        )
    metric = stat["Metric"]
    namespace, name = metric.get("Namespace"), metric.get("MetricName")
    if not namespace:
        raise missing(f"{where}.MetricStat.Metric.Namespace")
    if not name:
        raise missing(f"{where}.MetricStat.Metric.MetricName")
    return {
        "Id": query["Id"],
        "Label": query.get("Label") or name,
        "ReturnData": query.get("ReturnData", True),
        "Period": _period(stat["Period"], f"{where}.MetricStat.Period"),
        "Stat": stat["Stat"],
        "Unit": stat.get("Unit"),
        "Series": _series_of(namespace, name, metric.get("Dimensions", [])),
    }


def _period(period: int, member: str) -> int:
    if period in SHORT_PERIODS or period % 60 == 0:
        return period
    raise invalid(
        f"The parameter {member} must be 1, 5, 10, 20, 30 or a multiple of 60 (seconds), "
        f"not {period}."
    )


def _window(start: datetime, end: datetime, period: int) -> tuple[int, int]:
    """[start, end) in ms, the start rounded down as CloudWatch rounds it."""
    if end <= start:
        raise invalid("The parameter StartTime must be less than the parameter EndTime.")
    return _aligned(_ms(start), period), _ms(end)


def _aligned(start: int, period: int) -> int:
    if period < 60:
        step = period
    else:
        age = datetime.now(UTC).timestamp() * 1000 - start
        step = 60 if age < 15 * 86_400_000 else 300 if age < 63 * 86_400_000 else 3600
    return start - start % (step * 1000)


def _series_of(namespace: str, name: str, dimensions: list[dict[str, str]]) -> AnySeries | None:
    if namespace in NAMESPACES:
        return endpoint_series_of(name, dimensions, namespace)
    return series_of(namespace, name, dimensions)


def _passes(series: AnySeries, filters: list[dict[str, str]]) -> bool:
    """ListMetrics' dimension filters: each names a dimension the metric has (with its value,
    where one is given)."""
    if isinstance(series, EndpointSeries):
        return series.passes(filters)
    return all(
        f["Name"] == series.dimension and f.get("Value", series.value) == series.value
        for f in filters
    )


def _data_token(token: str | None, queries: int) -> tuple[int, int]:
    if not token:
        return 0, 0
    index, _, skip = token.partition("/")
    if index.isdigit() and skip.isdigit() and int(index) < queries:
        return int(index), int(skip)
    raise CloudWatchError("InvalidNextToken", "The service couldn't process the NextToken.")


def _list_token(token: str | None) -> int:
    if not token:
        return 0
    if token.isdigit() and len(token) < 12:
        return int(token)
    raise invalid(f"The value {token[:100]} for parameter NextToken is not valid.")


def _unit(series: AnySeries | None) -> str:
    return series.unit if series is not None else "None"


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def _time(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)
