"""Which credentials a registry has in the Docker auth file, and the file skopeo is given.

skopeo itself reads `auths` and calls the `credHelpers` a Docker config names
(`docker-credential-<name>`, found on PATH); it ignores `credsStore`, the helper Docker uses
for every registry without a helper of its own. For such a registry openmaker gives skopeo a
private copy of the file naming that helper for it, so `credsStore` works as in Docker; the
copy lives as long as one skopeo command and no secret ever reaches a command line.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from openmaker.runtime.images.reference import ImageReference

# Amazon ECR's registry hosts: ACCOUNT.dkr.ecr[-fips].REGION.amazonaws.com[.cn].
_ECR_HOST = re.compile(r"[0-9]{12}\.dkr\.ecr(-fips)?\.[a-z0-9-]+\.amazonaws\.com(\.cn)?")


def is_ecr(registry: str) -> bool:
    return _ECR_HOST.fullmatch(registry) is not None


def _config(auth_file: Path | None) -> dict[str, Any] | None:
    if auth_file is None:
        return None
    try:
        data = json.loads(auth_file.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _host(key: str) -> str:
    """The registry of an `auths` key (`host`, `https://host/v1/`, `host/namespace`)."""
    return key.split("://", 1)[-1].split("/", 1)[0]


def has_credentials(auth_file: Path | None, registry: str) -> bool:
    """Whether the auth file gives `registry` credentials: an entry, a helper or a store."""
    config = _config(auth_file)
    if config is None:
        return False
    helpers = config.get("credHelpers") or {}
    auths = config.get("auths") or {}
    return bool(
        registry in helpers or any(_host(key) == registry for key in auths)
        or config.get("credsStore")
    )  # fmt: skip


@contextlib.contextmanager
def registry_auth(auth_file: Path | None, reference: ImageReference) -> Iterator[Path | None]:
    """The auth file to give skopeo for `reference` (None: skopeo's own defaults)."""
    config = _config(auth_file)
    if auth_file is None or not auth_file.is_file():
        yield None
        return
    store = (config or {}).get("credsStore")
    helpers = (config or {}).get("credHelpers") or {}
    auths = (config or {}).get("auths") or {}
    registry = reference.registry
    if (
        config is None or not isinstance(store, str) or not store or not reference.is_registry
        or registry in helpers or any(_host(key) == registry for key in auths)
    ):  # fmt: skip
        yield auth_file
        return
    copy = {**config, "credHelpers": {**helpers, registry: store}}
    fd, name = tempfile.mkstemp(prefix="openmaker-auth-", suffix=".json")  # mode 0600
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(copy, out)
        yield Path(name)
    finally:
        os.unlink(name)


def ecr_advice(auth_file: Path | None, reference: ImageReference) -> str | None:
    """What to do when an ECR image failed to pull with no credentials configured for it."""
    if not reference.is_registry or not is_ecr(reference.registry):
        return None
    if has_credentials(auth_file, reference.registry):
        return None
    where = str(auth_file) if auth_file else "REGISTRY_AUTH_FILE (default ~/.docker/config.json)"
    return (
        f"no credentials are configured for the ECR registry {reference.registry}: name a "
        f'credential helper for it in {where} ("credHelpers": {{"{reference.registry}": '
        '"ecr-login"}, with docker-credential-ecr-login on PATH), or put a login in that file '
        "(aws ecr get-login-password | skopeo login --authfile FILE --username AWS "
        f"--password-stdin {reference.registry}), or serve the image from a mirror named in "
        "OPENMAKER_REGISTRIES_CONF"
    )
