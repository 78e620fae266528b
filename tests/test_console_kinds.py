"""The console's endpoint, processing and transform pages, in a real headless chromium against
a real `openmaker server`: an endpoint made with boto3 in the table and on its page, invoked
from the page's form (and refused without the CSRF token), a processing job in its tab and on
its page, hostile text from a container and a failure reason shown as text, and the new JSON
routes refusing a request without a session."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from openmaker.runtime import unavailable_reason
from tests.apiserver import ApiServer
from tests.browser import Page, chromium
from tests.test_console import XSS, form_login, http_call, logged_in, pytestmark  # noqa: F401
from tests.test_endpoints import SERVE, Deployer
from tests.test_processing import (
    SLOW_SCRIPT,
    image,
    processing_request,
    s3_output,
    stop_all,
    unique,
    wait_ended,
)
from tests.test_transform import Transforms

needs_sandbox = pytest.mark.skipif(
    unavailable_reason() is not None, reason="containers need the bwrap sandbox"
)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    with chromium(tmp_path_factory.mktemp("chromium")) as opened:
        yield opened


@pytest.fixture
def fresh(browser: Page) -> Page:
    browser.clear_cookies()
    browser.go("about:blank")
    return browser


def test_the_new_routes_without_a_session_refuse(api_server: ApiServer) -> None:
    for path in (
        "/console/api/endpoints",
        "/console/api/endpoints/anything",
        "/console/api/endpoints/anything/logs",
        "/console/api/kinds/processing",
        "/console/api/kinds/processing/anything",
        "/console/api/kinds/transform/anything/logs",
    ):
        status, _, body = http_call(api_server, "GET", path)
        assert status == 401, path
        assert json.loads(body)["error"] == "Unauthenticated"
    status, _, _ = http_call(
        api_server, "POST", "/console/api/endpoints/anything/invoke", b'{"body": ""}'
    )
    assert status == 401


@needs_sandbox
def test_an_endpoint_on_its_page_answers_the_form(
    api_server: ApiServer, fresh: Page, tmp_path: Path
) -> None:
    deployer = Deployer(api_server, tmp_path)
    try:
        # The container greets with markup: its answer must reach the page as text.
        model = deployer.model(SERVE, {"weights.txt": b"w1"}, GREETING=XSS)
        name = deployer.endpoint(model)
        logged_in(fresh, api_server)
        fresh.view("#/endpoints")
        row = f"document.querySelector('tr[data-endpoint={json.dumps(name)}]')"
        fresh.wait_for(f"{row}?.querySelector('.status')?.innerText === 'InService'", 120)
        cells = fresh.evaluate(f"[...{row}.children].map(c => c.innerText)")
        assert cells[:4] == [name, "InService", "AllTraffic", "1 / 1"]
        fresh.screenshot(tmp_path / "endpoints.png")

        fresh.evaluate(f"{row}.querySelector('a').click(); true")
        fresh.wait_for("document.querySelector('#instances') !== null")
        assert fresh.text("h1") == name
        variant = fresh.evaluate(
            "[...document.querySelector('[data-variant=AllTraffic]').children]"
            ".map(c => c.innerText)"
        )
        assert variant[1:3] == ["1 / 1", "1 / 1"]
        assert "Healthy" in fresh.text("#instances")
        assert "No invocation in the last 30 minutes" in fresh.text("#no-metrics")
        fresh.wait_for("document.querySelector('#log')?.innerText.includes('model server up')")

        fresh.evaluate(
            "document.querySelector('#invoke-body').value = 'x=1';"
            "document.querySelector('#invoke-type').value = 'text/plain';"
            "document.querySelector('#invoke').click(); true"
        )
        answer = fresh.wait_for("document.querySelector('#answer').innerText")
        assert answer == f"w1 {XSS} x=1"
        assert "AllTraffic answered" in fresh.text("#answer-about")
        # A container's error comes back as the runtime's ModelError, shown as text too.
        fresh.evaluate(
            "document.querySelector('#invoke-body').value = 'fail';"
            "document.querySelector('#invoke').click(); true"
        )
        fresh.wait_for("document.querySelector('#answer-about').innerText === 'ModelError'")
        assert "bad input: fail" in fresh.text("#answer")
        assert fresh.evaluate("window.__xss === undefined && !document.querySelector('main img')")
        fresh.screenshot(tmp_path / "endpoint.png")

        # Without this session's CSRF token, an invocation is refused before it is made.
        path = f"/console/api/endpoints/{name}/invoke"
        sent = json.dumps({"body": "x", "contentType": "text/plain"}).encode()
        cookie = form_login(api_server)
        for headers in ({}, {"X-CSRF-Token": "guessed"}):
            status, _, body = http_call(
                api_server, "POST", path, sent, {"Cookie": cookie, **headers}
            )
            assert status == 403, body
        refused = fresh.evaluate(
            f"fetch({json.dumps(path)}, {{method: 'POST', body: '{{}}'}}).then(r => r.status)"
        )
        assert refused == 403
    finally:
        deployer.delete_all()


@needs_sandbox
def test_a_processing_job_in_its_tab_and_on_its_page(
    api_server: ApiServer, fresh: Page, tmp_path: Path
) -> None:
    sagemaker = api_server.client("sagemaker")
    name = unique("console-proc")
    script = (
        f"import sys\nprint('processing started', flush=True)\n"
        f"open('/opt/ml/output/message', 'w').write({XSS!r})\nsys.exit(3)\n"
    )
    try:
        sagemaker.create_processing_job(**processing_request(name, image(tmp_path, script)))
        logged_in(fresh, api_server)
        fresh.view("#/jobs/processing")
        row = (
            f"document.querySelector('#jobs[data-kind=processing] tr[data-job={json.dumps(name)}]')"
        )
        fresh.wait_for(f"{row}?.querySelector('.status')?.innerText === 'Failed'", 120)
        cells = fresh.evaluate(f"[...{row}.children].map(c => c.innerText)")
        assert cells[0] == name and cells[3] == "ml.m5.large × 1"
        fresh.screenshot(tmp_path / "processing-jobs.png")

        fresh.evaluate(f"{row}.querySelector('a').click(); true")
        reason = fresh.wait_for("document.querySelector('#failure')?.innerText")
        assert reason == f"AlgorithmError: {XSS}"
        fresh.wait_for("document.querySelector('#log')?.innerText.includes('processing started')")
        assert "Created" in fresh.text(".timeline") and "Failed" in fresh.text(".timeline")
        assert fresh.evaluate("window.__xss === undefined && !document.querySelector('main img')")
        fresh.screenshot(tmp_path / "processing-job.png")

        # The transform tab answers too (its own route), here with no such job.
        fresh.view("#/jobs/transform")
        fresh.wait_for("document.querySelector('#jobs[data-kind=transform]') !== null")
        fresh.evaluate(
            "document.querySelector('input[type=search]').value = 'no-such-job-here';"
            "document.querySelector('input[type=search]').dispatchEvent(new Event('change')); true"
        )
        fresh.wait_for(
            "document.querySelector('#jobs .empty')?.innerText"
            ".includes('No batch transform job matches')"
        )
        assert fresh.text("#problem") == ""
    finally:
        stop_all(sagemaker, [name])


@needs_sandbox
def test_stop_buttons_of_processing_and_transform_jobs(
    api_server: ApiServer, fresh: Page, tmp_path: Path
) -> None:
    sagemaker = api_server.client("sagemaker")
    name = unique("console-stop")
    transforms = Transforms(api_server, tmp_path)
    try:
        api_server.client("s3").create_bucket(Bucket=name)
        live = s3_output("live", f"s3://{name}/live", "/opt/ml/processing/live")
        request = processing_request(name, image(tmp_path, SLOW_SCRIPT), outputs=[live])
        sagemaker.create_processing_job(**request)
        # The transform job's container holds its `slow` request for ever.
        transform = transforms.create(transforms.model(), transforms.inputs({"a.csv": "slow\n"}))
        cookie = form_login(api_server)
        for path in (
            f"/console/api/kinds/processing/{name}/stop",
            f"/console/api/kinds/transform/{transform}/stop",
        ):
            # Without the session's CSRF token, or with a guessed one: refused.
            status, _, _ = http_call(api_server, "POST", path, b"", {"Cookie": cookie})
            assert status == 403, path
            headers = {"Cookie": cookie, "X-CSRF-Token": "guessed"}
            assert http_call(api_server, "POST", path, b"", headers)[0] == 403
        assert (
            sagemaker.describe_processing_job(ProcessingJobName=name)["ProcessingJobStatus"]
            == "InProgress"
        )

        logged_in(fresh, api_server)
        for kind, job, noun in (
            ("processing", name, "processing job"),
            ("transform", transform, "transform job"),
        ):
            fresh.view(f"#/{kind}/{job}")
            fresh.wait_for("document.querySelector('#stop')?.disabled === false", 120)
            fresh.accept_dialogs = False
            fresh.dialogs.clear()
            fresh.evaluate("document.querySelector('#stop').click(); true")
            assert fresh.dialogs == [f"Stop {noun} {job}?"]
            fresh.accept_dialogs = True
            fresh.evaluate("document.querySelector('#stop').click(); true")
            shown = "document.querySelector('h1 + .status')?.innerText"
            fresh.wait_for(f"['Stopping', 'Stopped'].includes({shown})")
            fresh.screenshot(tmp_path / f"{kind}-stopped.png")
        assert wait_ended(sagemaker, name)["ProcessingJobStatus"] == "Stopped"
        assert transforms.wait(transform)["TransformJobStatus"] == "Stopped"
    finally:
        stop_all(sagemaker, [name])
        transforms.stop_all()
