"""Registry tokens for ECR images whose registry has no credentials configured, as Docker's
`ecr-login` helper gets them: ECR's `GetAuthorizationToken` (through the configured AWS
endpoint, in the registry's own region and account) answers `base64("AWS:" + password)` and
when it expires (12 h on AWS). A token is kept, readable by its owner only, under the image
store until a few minutes before that end, so that every pull of the registry in between asks
ECR nothing. It only ever reaches skopeo inside a private auth file (auth.py).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openmaker.files import replace_whole
from openmaker.settings import EcrEndpoint

# ACCOUNT.dkr.ecr[-fips].REGION.amazonaws.com[.cn]: the account and region of an ECR host.
_ECR_HOST = re.compile(
    r"(?P<account>[0-9]{12})\.dkr\.ecr(-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(\.cn)?"
)
# A token is renewed this long before ECR says it ends (a pull under way must not outlive it).
RENEW_BEFORE_SECONDS = 15 * 60


class EcrTokenError(RuntimeError):
    """ECR gave no token; the message says what it answered."""


def is_ecr(registry: str) -> bool:
    return _ECR_HOST.fullmatch(registry) is not None


@dataclass(frozen=True)
class EcrTokens:
    """Tokens for ECR registries, from `endpoint`, kept in `folder`."""

    endpoint: EcrEndpoint
    folder: Path

    def auth(self, registry: str) -> str:
        """The Docker auth entry (`base64("AWS:password")`) for the ECR host `registry`."""
        found = _ECR_HOST.fullmatch(registry)
        if found is None:
            raise ValueError(f"not an ECR registry: {registry!r}")
        path = self.folder / f"{registry}.json"
        with _locked(self.folder / f"{registry}.lock"):
            cached = _read(path)
            if cached is not None and cached["expires"] - RENEW_BEFORE_SECONDS > time.time():
                return str(cached["auth"])
            token, expires = self._fetch(found["account"], found["region"])
            replace_whole(path, json.dumps({"auth": token, "expires": expires}), 0o600)
        return token

    def _fetch(self, account: str, region: str) -> tuple[str, float]:
        import boto3  # only when a token is needed: most pulls never ask ECR
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError

        endpoint = self.endpoint
        client = boto3.client(
            "ecr",
            region_name=region,
            endpoint_url=endpoint.url,
            aws_access_key_id=endpoint.access_key_id,
            aws_secret_access_key=endpoint.secret_access_key,
            aws_session_token=endpoint.session_token,
            # An ECR out of reach (no network) is soon said so: a mirror may serve the image.
            config=Config(connect_timeout=5, read_timeout=30, retries={"total_max_attempts": 2}),
        )
        try:
            answer = client.get_authorization_token(registryIds=[account])
        except ClientError as exc:
            error = exc.response.get("Error", {})
            said = f"{error.get('Code', 'error')}: {error.get('Message', '')}".strip()
            raise EcrTokenError(f"ECR refused a registry token ({said})") from None
        except BotoCoreError as exc:
            raise EcrTokenError(f"ECR could not be asked for a registry token ({exc})") from None
        data = (answer.get("authorizationData") or [{}])[0]
        token = str(data.get("authorizationToken") or "")
        try:
            user = base64.b64decode(token, validate=True).decode().partition(":")[0]
        except ValueError:
            user = ""
        if user != "AWS":
            raise EcrTokenError("ECR answered without a registry token for user AWS")
        expires = data.get("expiresAt")
        # An answer without an end: the 12 hours AWS gives.
        end = expires.timestamp() if expires is not None else time.time() + 12 * 3600
        return token, end


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    ok = isinstance(data, dict) and isinstance(data.get("expires"), float | int)
    return data if ok and isinstance(data.get("auth"), str) else None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One process asks ECR for a registry's token at a time; the others then read it."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
