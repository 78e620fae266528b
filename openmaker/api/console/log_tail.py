"""A log's tail for a console page, read through the CloudWatch Logs queries the API answers
(openmaker/jobs/cloudwatch.py): the lines of some streams of one group after a row id, oldest
first, so that a page polling with the last id it saw gets each line once."""

from __future__ import annotations

from typing import Any

from openmaker.jobs.cloudwatch import LogQueries, Window
from openmaker.shapes.paging import encode, paginator

# What one answer holds at most (the page asks again for more).
LOG_BATCH = 1000
# The streams of one job or endpoint that are read (one per host or instance).
MAX_STREAMS = 50


def stream_names(logs: LogQueries, group: str, prefix: str | None = None) -> list[str]:
    """The streams of `group` (those starting with `prefix`), in name order."""
    found = logs.describe_log_streams(group, prefix=prefix, limit=MAX_STREAMS)
    return [str(s["logStreamName"]) for s in found["logStreams"]]


def tail(
    logs: LogQueries, group: str, streams: list[str], after: int, prefix: str = ""
) -> dict[str, Any]:
    """The events of `streams` after the row `after`: {events: [{id, host, timestamp,
    message}], last}, `host` being the stream's name less `prefix`."""
    if not streams:  # no stream named would be every stream of every group
        return {"events": [], "last": after}
    token = encode("FilterLogEvents", {"after": after}) if after else None
    found = logs.filter_log_events(group, streams, None, Window(), limit=LOG_BATCH, token=token)
    events = [
        {
            "id": int(e["eventId"]),
            "host": str(e["logStreamName"]).removeprefix(prefix),
            "timestamp": e["timestamp"],
            "message": e["message"],
        }
        for e in found["events"]
    ]
    last = events[-1]["id"] if events else after
    if "nextToken" in found:  # the scan stopped early: go on from where it stopped
        position = paginator("FilterLogEvents", "logs").position(found["nextToken"]) or {}
        last = max(last, int(position.get("after", last)))
    return {"events": events, "last": last}
