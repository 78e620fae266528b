"""The console's HTML and static assets, and the headers every console answer carries.

The assets are a fixed set read from the package at start: a request names one of them, never
a path, so nothing outside that set can be served.
"""

from __future__ import annotations

import html
from importlib import resources

from starlette.responses import Response

# No inline script or style anywhere, nothing from another origin, no framing.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # A one-time login URL must never leave in a Referer header to another site.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
}


def _load() -> dict[str, tuple[bytes, str]]:
    folder = resources.files(__package__) / "static"
    found = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _TYPES:
            found[entry.name] = (entry.read_bytes(), _TYPES[suffix])
    return found


ASSETS = _load()


def asset(name: str) -> Response:
    """A static asset by its name (404 for anything else)."""
    found = ASSETS.get(name)
    if found is None or name.endswith(".html"):
        return secured(Response("Not found", status_code=404, media_type="text/plain"))
    body, media_type = found
    return secured(Response(body, media_type=media_type))


def shell() -> Response:
    """The page every console view is drawn in (by console.js, from the JSON views)."""
    body, media_type = ASSETS["console.html"]
    return secured(Response(body, media_type=media_type))


def login_page(problem: str | None = None, status_code: int = 200) -> Response:
    notice = f'<p class="problem" role="alert">{html.escape(problem)}</p>' if problem else ""
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>openmaker console: log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/console/static/console.css"></head>
<body class="login"><main>
<h1>openmaker</h1>
{notice}
<p>Open the link <code>openmaker console-url</code> prints, or log in with the server's key
pair (what <code>openmaker env</code> prints as AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY).</p>
<form method="post" action="/console/login">
<label>Access key ID <input name="access_key_id" autocomplete="username" required></label>
<label>Secret access key <input name="secret_access_key" type="password"
 autocomplete="current-password" required></label>
<button type="submit">Log in</button>
</form></main></body></html>
"""
    return secured(Response(page, status_code=status_code, media_type="text/html"))


def secured(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response
