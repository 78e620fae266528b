"""The auth proxy of the embedded S3 endpoint (`rclone serve s3 --auth-proxy`).

rclone runs it once per access key it has not seen (or every 5 minutes for one in use), with
`{"user": "<access key id>", ...}` on standard input, and expects on standard output the key's
secret (`_secret_access_key`; rclone checks the request's signature with it) and the backend
the key sees. The server's own key sees the whole store; a job's key (see
`openmaker.jobs.gate_keys`) sees a `combine` of just its places, nested so that only the named
folders exist, those it may only read behind a read-only `union`. Anything else answers `{}`,
which rclone refuses.

Over the user's own S3 server (`REMOTE_VARIABLE`), the places are that server's (`:s3:` backends
configured by rclone's environment) and the server's own key sees nothing.

It takes what it needs from its environment (set by `openmaker.api.s3_endpoint`): the store's
folder, openmaker's home, and the server's key pair.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from openmaker.jobs.gate_keys import KEY_PREFIX, record_path, view_path

STORE_VARIABLE = "OPENMAKER_GATE_STORE"
HOME_VARIABLE = "OPENMAKER_GATE_HOME"
SERVER_KEY_VARIABLE = "OPENMAKER_GATE_SERVER_KEY_ID"
SERVER_SECRET_VARIABLE = "OPENMAKER_GATE_SERVER_SECRET"
# Set when the store is the user's S3 server: a place is then `:s3:bucket/folder`, an S3 backend
# whose endpoint and credentials rclone takes from its own `RCLONE_S3_*` variables.
REMOTE_VARIABLE = "OPENMAKER_GATE_REMOTE"


def answer(user: str, env: dict[str, str]) -> dict[str, Any]:
    remote = env.get(REMOTE_VARIABLE) == "1"
    if user and user == env.get(SERVER_KEY_VARIABLE) and not remote:
        return {
            "type": "local",
            "_root": env[STORE_VARIABLE],
            "_secret_access_key": env[SERVER_SECRET_VARIABLE],
        }
    if not user.startswith(KEY_PREFIX) or not user[len(KEY_PREFIX) :].isalnum():
        return {}
    home = Path(env[HOME_VARIABLE])
    try:
        record = json.loads(record_path(home, user).read_text())
    except (OSError, ValueError):
        return {}
    view = view_path(home, user)
    tree: dict[str, Any] = {}
    for number, grant in enumerate(record["grants"]):
        if remote:
            leaf = f":s3:{grant['bucket']}/{grant['folder']}".rstrip("/")
        else:
            # The link is to the bucket (see gate_keys.mint); the place is the folder under it.
            leaf = str(view / str(number) / grant["folder"]).rstrip("/")
        if not grant["write"]:
            # union refuses a single upstream; an empty read-only memory remote is the second.
            leaf = ":union,upstreams=" + _value(_item(f"{leaf}:ro") + " " + _item(":memory::ro"))
            leaf += ":"
        node = tree.setdefault(grant["bucket"], {})
        parts = [p for p in grant["folder"].split("/") if p]
        if not parts:
            tree[grant["bucket"]] = leaf
            continue
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = leaf
    if not tree:
        return {}
    return {
        "type": "combine",
        "_root": "",
        "upstreams": _upstreams(tree),
        "_secret_access_key": record["secret_access_key"],
    }


def _upstreams(tree: dict[str, Any]) -> str:
    """combine's `upstreams`: `dir=remote` items; a folder of several places is a combine."""
    items = []
    for name, child in tree.items():
        if isinstance(child, str):
            remote = child
        else:
            remote = f":combine,upstreams={_value(_upstreams(child))}:"
        items.append(_item(f"{name}={remote}"))
    return " ".join(items)


def _item(text: str) -> str:
    """One item of a space-separated list (CSV quoting with `"`)."""
    return '"' + text.replace('"', '""') + '"'


def _value(text: str) -> str:
    """A parameter value of an rclone connection string (quoted with `'`)."""
    return "'" + text.replace("'", "''") + "'"


def main() -> None:
    request = json.load(sys.stdin)
    json.dump(answer(str(request.get("user") or ""), dict(os.environ)), sys.stdout)


if __name__ == "__main__":
    main()
