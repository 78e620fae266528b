"""The endpoint page's invocation and latency charts, in a real headless chromium against a
real `openmaker server`: invocations made with boto3 while the page is open appear on it as
they are recorded (live), a line per variant."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from openmaker.runtime import unavailable_reason
from tests.apiserver import ApiServer
from tests.browser import Page, chromium
from tests.test_console import logged_in, pytestmark  # noqa: F401
from tests.test_endpoints import SERVE, Deployer

needs_sandbox = pytest.mark.skipif(
    unavailable_reason() is not None, reason="containers need the bwrap sandbox"
)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    with chromium(tmp_path_factory.mktemp("chromium")) as opened:
        yield opened


def chart_line(title: str) -> str:
    """The JavaScript for the variant's line on the chart whose title begins with `title`."""
    charts = "[...document.querySelectorAll('#invocation-charts .chart')]"
    chart = f"{charts}.find(c => c.dataset.metric.startsWith({json.dumps(title)}))"
    return f"{chart}?.querySelector('polyline[data-host=AllTraffic]')"


@needs_sandbox
def test_invocations_and_latency_are_charted_live(
    api_server: ApiServer, browser: Page, tmp_path: Path
) -> None:
    deployer = Deployer(api_server, tmp_path)
    try:
        name = deployer.endpoint(deployer.model(SERVE, {"weights.txt": b"w"}))
        assert deployer.wait(name)["EndpointStatus"] == "InService"
        browser.clear_cookies()
        logged_in(browser, api_server)
        browser.view(f"#/endpoint/{name}")
        browser.wait_for("document.querySelector('#instances') !== null")
        assert "No invocation" in browser.text("#no-metrics")

        # Made while the page is open: the page polls, the charts come as they are recorded.
        for body in (b"a", b"b", b"fail"):
            try:
                deployer.runtime.invoke_endpoint(EndpointName=name, Body=body)
            except ClientError as error:
                assert error.response["Error"]["Code"] == "ModelError"
        for title in ("Invocations", "Invocation errors", "ModelLatency", "OverheadLatency"):
            browser.wait_for(f"{chart_line(title)} != null", 60)
        assert browser.evaluate("document.querySelector('#no-metrics') === null")
        titles = browser.evaluate(
            "[...document.querySelectorAll('#invocation-charts .chart')].map(c => c.dataset.metric)"
        )
        assert len(titles) == 4, titles
        # What the page charts: the 3 invocations, the one error.
        charted = browser.evaluate(
            f"fetch({json.dumps('/console/api/endpoints/' + name)}).then(r => r.json())"
            ".then(d => Object.fromEntries(Object.entries(d.invocationMetrics).map("
            "([t, lines]) => [t.split(' ')[0], (lines.AllTraffic || []).reduce("
            "(sum, p) => sum + p[1], 0)])))"
        )
        assert charted["Invocations"] == 3
        assert charted["Invocation"] == 1  # "Invocation errors, 4XX + 5XX"
        browser.screenshot(tmp_path / "endpoint-charts.png")
    finally:
        deployer.delete_all()
