"""The web console, in a real headless chromium against a real `openmaker server`: logging in
(one-time URL, form), the jobs table and a job's page with a real job's logs and metric chart,
Stop with and without the CSRF token, hostile text shown as text, and routes that refuse a
request without a session. Each page's screenshot lands in the test's temporary folder."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.apiserver import ApiServer, openmaker_command, stop_all
from tests.browser import Page, chromium
from tests.helpers import make_image, request, unique_name

pytestmark = pytest.mark.skipif(
    subprocess.run(["which", "chromium"], capture_output=True).returncode != 0,
    reason="Debian's chromium is not installed (scripts/install.sh test installs it)",
)

# Markup that runs script wherever it is parsed as HTML instead of shown as text.
XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=1</script>'


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    with chromium(tmp_path_factory.mktemp("chromium")) as opened:
        yield opened


@pytest.fixture
def fresh(page: Page) -> Page:
    """The page, logged out: no cookie of an earlier test."""
    page.clear_cookies()
    page.go("about:blank")
    return page


def base(server: ApiServer) -> str:
    return server.env["AWS_ENDPOINT_URL_SAGEMAKER"]


def console_url(server: ApiServer) -> str:
    env = {**os.environ, **server.env, "OPENMAKER_HOME": str(server.home)}
    return subprocess.run(
        [*openmaker_command(), "console-url"], env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def http_call(
    server: ApiServer,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request, redirects not followed: (status, headers, body)."""
    address = urllib.parse.urlsplit(base(server))
    connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        answer = connection.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        connection.close()


def form_login(server: ApiServer) -> str:
    """A session cookie's value, from the login form posted outside a browser."""
    fields = urllib.parse.urlencode(
        {
            "access_key_id": server.env["AWS_ACCESS_KEY_ID"],
            "secret_access_key": server.env["AWS_SECRET_ACCESS_KEY"],
        }
    )
    status, headers, _ = http_call(
        server,
        "POST",
        "/console/login",
        fields.encode(),
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 303
    cookie = headers["set-cookie"]
    return cookie.split(";", 1)[0]


def logged_in(page: Page, server: ApiServer) -> None:
    page.go(console_url(server))
    page.wait_for("document.querySelector('#jobs') !== null")


def job_with_metrics(tmp_path: Path, server: ApiServer, name: str, script: str) -> dict[str, Any]:
    server.client("s3").create_bucket(Bucket=name)
    body = request(name, str(make_image(tmp_path / "image", script)), f"s3://{name}/out")
    body["AlgorithmSpecification"]["MetricDefinitions"] = [
        {"Name": "train:loss", "Regex": r"loss=([0-9.]+)"}
    ]
    body["HyperParameters"] = {"epochs": "3", "note": XSS}
    return body


def test_routes_without_a_session_refuse(api_server: ApiServer) -> None:
    for path in (
        "/console/api/jobs",
        "/console/api/machine",
        "/console/api/cluster",
        "/console/api/session",
        "/console/api/jobs/anything",
        "/console/api/jobs/anything/logs",
        "/console/api/jobs/anything/metrics",
        "/console/api/jobs/anything/artifacts/model",
    ):
        status, _, body = http_call(api_server, "GET", path)
        assert status == 401, path
        assert json.loads(body) == {
            "error": "Unauthenticated",
            "message": "Log in to the console first.",
        }
    status, _, _ = http_call(api_server, "POST", "/console/api/jobs/anything/stop")
    assert status == 401
    # A forged cookie is no session.
    status, _, _ = http_call(
        api_server, "GET", "/console/api/jobs", headers={"Cookie": "openmaker-console=forged"}
    )
    assert status == 401
    status, headers, _ = http_call(api_server, "GET", "/console/")
    assert (status, headers["location"]) == (303, "/console/login")
    # Static assets are a fixed set: no path reaches the filesystem.
    for path in (
        "/console/static/..%2f..%2fapp.py",
        "/console/static/%2e%2e%2fauth.py",
        "/console/static/console.html",
        "/console/static/nothing.js",
    ):
        assert http_call(api_server, "GET", path)[0] == 404, path
    status, headers, _ = http_call(api_server, "GET", "/console/static/console.js")
    assert status == 200
    assert "script-src 'self'" in headers["content-security-policy"]
    # Minting a login token takes the server's signature.
    assert http_call(api_server, "POST", "/console/token")[0] == 403


def test_a_signed_mint_request_mints_once(api_server: ApiServer) -> None:
    """A signed token request seen on the wire (SigV4 accepts it for 15 minutes) cannot be
    sent again to mint a second login token."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    url = base(api_server).rstrip("/") + "/console/token"
    signed = AWSRequest(method="POST", url=url, data=b"")
    env = api_server.env
    credentials = Credentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
    SigV4Auth(credentials, "sagemaker", env["AWS_REGION"]).add_auth(signed)
    headers = dict(signed.headers.items())
    status, _, body = http_call(api_server, "POST", "/console/token", b"", headers)
    assert status == 200
    assert json.loads(body)["path"].startswith("/console/login?token=")
    status, _, body = http_call(api_server, "POST", "/console/token", b"", headers)
    assert status == 403
    assert b"used already" in body


def test_the_one_time_url_logs_in_once(api_server: ApiServer, fresh: Page, tmp_path: Path) -> None:
    url = console_url(api_server)
    fresh.go(url)
    fresh.wait_for("document.querySelector('#jobs') !== null")
    assert fresh.evaluate("location.pathname + location.search") == "/console/"  # token gone
    [cookie] = [c for c in fresh.cookies() if c["name"] == "openmaker-console"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
    assert fresh.evaluate("document.cookie") == ""  # script never sees the session
    fresh.screenshot(tmp_path / "jobs.png")

    fresh.clear_cookies()
    fresh.go(url)  # the same URL again
    assert "used already or has expired" in fresh.text(".problem")
    assert fresh.evaluate("document.querySelector('#jobs')") is None


def test_the_login_form(api_server: ApiServer, fresh: Page, tmp_path: Path) -> None:
    fresh.go(base(api_server) + "/console/")
    fresh.wait_for("document.querySelector('form') !== null")
    fill = (
        "document.querySelector('[name=access_key_id]').value = {key};"
        "document.querySelector('[name=secret_access_key]').value = {secret};"
        "document.querySelector('form').submit(); true"
    )
    key = json.dumps(api_server.env["AWS_ACCESS_KEY_ID"])
    fresh.evaluate(fill.format(key=key, secret=json.dumps("not-the-secret")))
    fresh.wait_for("document.querySelector('.problem') !== null")
    assert fresh.text(".problem") == "That is not this server's key pair."
    fresh.screenshot(tmp_path / "login-refused.png")
    secret = json.dumps(api_server.env["AWS_SECRET_ACCESS_KEY"])
    fresh.evaluate(fill.format(key=key, secret=secret))
    fresh.wait_for("document.querySelector('#jobs') !== null")
    # Logging out ends the session on the server, not only in the browser.
    [cookie] = [c for c in fresh.cookies() if c["name"] == "openmaker-console"]
    fresh.evaluate("document.querySelector('#logout').click(); true")
    fresh.wait_for("document.querySelector('form') !== null")
    status, _, _ = http_call(
        api_server,
        "GET",
        "/console/api/jobs",
        headers={"Cookie": f"openmaker-console={cookie['value']}"},
    )
    assert status == 401
    # A login posted from another site's page is refused.
    status, _, _ = http_call(
        api_server,
        "POST",
        "/console/login",
        b"access_key_id=x&secret_access_key=y",
        {"Origin": "http://evil.example", "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 403


def test_a_job_in_the_table_and_on_its_page(
    api_server: ApiServer, fresh: Page, tmp_path: Path
) -> None:
    sagemaker = api_server.client("sagemaker")
    name = unique_name("console")
    script = (
        "#!/bin/sh\n"
        + "".join(f'echo "step {i} loss={1 / (i + 1):.3f}"\n' for i in range(5))
        + f"echo '{XSS}'\n"
        + "echo weights > /opt/ml/model/w.txt\n"
    )
    try:
        sagemaker.create_training_job(**job_with_metrics(tmp_path, api_server, name, script))
        logged_in(fresh, api_server)
        row = f"document.querySelector('tr[data-job={json.dumps(name)}]')"
        fresh.wait_for(f"{row}?.querySelector('.status')?.innerText === 'Completed'", 120)
        cells = fresh.evaluate(f"[...{row}.children].map(c => c.innerText)")
        assert cells[0] == name and cells[3] == "ml.m5.large × 1"
        fresh.screenshot(tmp_path / "jobs.png")

        fresh.evaluate(f"{row}.querySelector('a').click(); true")
        fresh.wait_for("document.querySelectorAll('#log .line').length >= 6")
        assert fresh.text("h1") == name
        assert fresh.text("#problem") == ""
        lines = fresh.evaluate("[...document.querySelectorAll('#log .line')].map(l => l.innerText)")
        assert f"algo-1{XSS}" in [line.replace(" ", "", 1) for line in lines] or any(
            line.endswith(XSS) for line in lines
        )
        fresh.wait_for("document.querySelector('[data-metric=\"train:loss\"] polyline') !== null")
        points = fresh.evaluate(
            "document.querySelector('[data-metric=\"train:loss\"] polyline')"
            ".getAttribute('points').split(' ').length"
        )
        assert points == 5
        # The hyperparameter and the log line are text on the page, never markup that ran.
        assert XSS in fresh.text("main")
        assert fresh.evaluate("window.__xss === undefined && !document.querySelector('main img')")
        fresh.screenshot(tmp_path / "job.png")
        # The model archive downloads through the session, as a gzip file.
        magic = fresh.evaluate(
            "fetch(document.querySelector('a.download').href).then(r => r.arrayBuffer())"
            ".then(b => [...new Uint8Array(b).slice(0, 2)])"
        )
        assert magic == [0x1F, 0x8B]

        fresh.view("#/machine")
        fresh.wait_for("document.querySelector('.card dl') !== null")
        fresh.screenshot(tmp_path / "machine.png")
    finally:
        stop_all(sagemaker, [name])


def test_stop_needs_the_csrf_token(api_server: ApiServer, fresh: Page, tmp_path: Path) -> None:
    sagemaker = api_server.client("sagemaker")
    name = unique_name("console-stop")
    script = (
        "#!/bin/sh\necho started\ni=0\n"
        'while true; do i=$((i + 1)); echo "loss=0.$i"; sleep 0.2; done\n'
    )
    try:
        sagemaker.create_training_job(**job_with_metrics(tmp_path, api_server, name, script))
        path = f"/console/api/jobs/{name}/stop"
        cookie = form_login(api_server)
        status, _, body = http_call(api_server, "POST", path, b"", {"Cookie": cookie})
        assert status == 403, body
        status, _, _ = http_call(
            api_server, "POST", path, b"", {"Cookie": cookie, "X-CSRF-Token": "guessed"}
        )
        assert status == 403
        assert sagemaker.describe_training_job(TrainingJobName=name)["TrainingJobStatus"] == (
            "InProgress"
        )

        logged_in(fresh, api_server)
        fresh.view(f"#/job/{name}")
        fresh.wait_for("document.querySelector('#log')?.innerText.includes('started')", 120)
        # The chart grows as the job logs more values, with the page left open.
        count = (
            "(document.querySelector('[data-metric=\"train:loss\"] polyline')"
            "?.getAttribute('points').split(' ').length ?? 0)"
        )
        seen = fresh.wait_for(f"{count} >= 3 && {count}")
        fresh.wait_for(f"{count} > {seen}")
        # From the page itself, but without the header: refused too.
        refused = fresh.evaluate(
            f"fetch({json.dumps(path)}, {{method: 'POST'}}).then(r => r.status)"
        )
        assert refused == 403
        fresh.accept_dialogs = False
        fresh.evaluate("document.querySelector('#stop').click(); true")
        assert fresh.dialogs == [f"Stop training job {name}?"]
        assert sagemaker.describe_training_job(TrainingJobName=name)["TrainingJobStatus"] == (
            "InProgress"
        )
        fresh.accept_dialogs = True
        fresh.evaluate("document.querySelector('#stop').click(); true")
        fresh.wait_for(
            "['Stopping', 'Stopped'].includes(document.querySelector('h1 + .status')?.innerText)"
        )
        fresh.screenshot(tmp_path / "stopped.png")
    finally:
        stop_all(sagemaker, [name])
    described = sagemaker.describe_training_job(TrainingJobName=name)
    assert described["TrainingJobStatus"] == "Stopped"


def test_a_failure_reason_is_shown_as_text(
    api_server: ApiServer, fresh: Page, tmp_path: Path
) -> None:
    sagemaker = api_server.client("sagemaker")
    name = unique_name("console-fail")
    script = f"#!/bin/sh\necho '{XSS}' > /opt/ml/output/failure\nexit 3\n"
    try:
        sagemaker.create_training_job(**job_with_metrics(tmp_path, api_server, name, script))
        logged_in(fresh, api_server)
        fresh.view(f"#/job/{name}")
        reason = fresh.wait_for("document.querySelector('#failure')?.innerText", 120)
        assert XSS in reason
        assert fresh.evaluate("window.__xss === undefined && !document.querySelector('main img')")
        fresh.screenshot(tmp_path / "failed.png")
    finally:
        stop_all(sagemaker, [name])


def test_console_url_without_a_server(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OPENMAKER_"))}
    ran = subprocess.run(
        [*openmaker_command(), "console-url"],
        env={**env, "OPENMAKER_HOME": str(tmp_path / "home")},
        capture_output=True,
        text=True,
    )
    assert ran.returncode == 1
    assert "no openmaker server is running" in ran.stderr
