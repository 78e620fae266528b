"""A one-time console login URL from a running server, asked for with a SigV4-signed request
(what `openmaker console-url` prints): only the holder of the server's key pair gets one."""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotocoreCredentials

from openmaker.api.credentials import Credentials

TOKEN_PATH = "/console/token"


class LoginUrlError(Exception):
    pass


def login_url(api_url: str, credentials: Credentials, region: str) -> str:
    url = api_url.rstrip("/") + TOKEN_PATH
    # A signed nonce: two requests in one second would otherwise sign alike, and each
    # signature mints once.
    request = AWSRequest(
        method="POST", url=url, data=b"", headers={"X-Openmaker-Nonce": secrets.token_hex(16)}
    )
    signer = SigV4Auth(
        BotocoreCredentials(credentials.access_key_id, credentials.secret_access_key),
        "sagemaker",
        region,
    )
    signer.add_auth(request)
    call = urllib.request.Request(
        url, data=b"", headers=dict(request.headers.items()), method="POST"
    )
    try:
        with urllib.request.urlopen(call, timeout=30) as answer:
            path = json.loads(answer.read())["path"]
    except urllib.error.HTTPError as error:
        message = json.loads(error.read() or b"{}").get("message", f"HTTP {error.code}")
        raise LoginUrlError(f"the server refused a login URL: {message}") from None
    except (OSError, ValueError, KeyError) as error:
        raise LoginUrlError(f"the server gave no login URL: {error}") from None
    return api_url.rstrip("/") + path
