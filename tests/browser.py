"""A headless Debian `chromium` driven over the Chrome DevTools Protocol (one page, one
websocket): what the console's tests look at pages with. No browser is downloaded."""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

CHROMIUM = "chromium"


class BrowserError(Exception):
    pass


class Page:
    """One tab: navigate, evaluate script, wait for a condition, take a screenshot. A
    `confirm()` the page opens is answered with `accept_dialogs`."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.ids = itertools.count(1)
        self.accept_dialogs = True
        self.dialogs: list[str] = []
        self.send("Page.enable")
        self.send("Runtime.enable")

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        number = next(self.ids)
        self.socket.send(json.dumps({"id": number, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == number:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))
            if message.get("method") == "Page.javascriptDialogOpening":
                self.dialogs.append(message["params"]["message"])
                self._answer_dialog()

    def _answer_dialog(self) -> None:
        number = next(self.ids)
        params = {"accept": self.accept_dialogs}
        self.socket.send(
            json.dumps({"id": number, "method": "Page.handleJavaScriptDialog", "params": params})
        )

    def go(self, url: str) -> None:
        """Load `url` as a new document (for a change of the fragment alone, `view`)."""
        self.evaluate("window.__leaving = true")
        self.send("Page.navigate", url=url)
        self.wait_for("!window.__leaving && document.readyState === 'complete'")

    def view(self, fragment: str) -> None:
        """Show another view of the page loaded (`#/...`), as a click on a link would."""
        self.evaluate(f"location.hash = {json.dumps(fragment)}")

    def evaluate(self, expression: str) -> Any:
        result = self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60) -> Any:
        """The first truthy value of `expression`, polled until `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(expression)
            except BrowserError:  # a page being replaced by the next one
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"never true: {expression}; the page: {self._shown()}")
            time.sleep(0.1)

    def _shown(self) -> str:
        """Where the page is and the start of its text, to say why a wait failed."""
        where = "location.href + ' | ' + (document.body?.innerText ?? '').slice(0, 600)"
        try:
            return str(self.evaluate(where))
        except BrowserError as exc:
            return f"unreadable ({exc})"

    def text(self, selector: str) -> str:
        return str(
            self.evaluate(f"document.querySelector({json.dumps(selector)})?.innerText ?? ''")
        )

    def cookies(self) -> list[dict[str, Any]]:
        return list(self.send("Network.getCookies")["cookies"])

    def clear_cookies(self) -> None:
        self.send("Network.clearBrowserCookies")

    def screenshot(self, path: Path) -> None:
        # The whole page, not the window alone.
        size = self.send("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        data = self.send(
            "Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True
        )["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))


@contextmanager
def chromium(profile: Path) -> Iterator[Page]:
    """Headless chromium over a fresh profile folder, and its one page."""
    binary = shutil.which(CHROMIUM)
    if binary is None:
        raise BrowserError("Debian's chromium is not installed (scripts/install.sh test)")
    profile.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            binary,
            "--headless=new",
            "--no-sandbox",  # root in CI; the page only ever loads the test's own server
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--window-size=1280,1000",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port = _debugging_port(profile / "DevToolsActivePort", process)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as answer:
            targets = json.loads(answer.read())
        [page] = [t for t in targets if t["type"] == "page"]
        with connect(page["webSocketDebuggerUrl"], max_size=None) as socket:
            yield Page(socket)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _debugging_port(record: Path, process: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 60
    while True:
        if record.exists() and (first := record.read_text().split("\n", 1)[0]).isdigit():
            return int(first)
        if process.poll() is not None or time.monotonic() > deadline:
            raise BrowserError("chromium did not start")
        time.sleep(0.05)
