"""Which credentials a registry has in the Docker auth file, and the file skopeo is given.

skopeo itself reads `auths` and calls the `credHelpers` a Docker config names
(`docker-credential-<name>`, found on PATH); it ignores `credsStore`, the helper Docker uses
for every registry without a helper of its own. For such a registry openmaker gives skopeo a
private copy of the file naming that helper for it, so `credsStore` works as in Docker; the
copy lives as long as one skopeo command and no secret ever reaches a command line. An ECR
registry with no credentials configured gets a token from ECR (ecr.py) in such a copy, written
under the image store (private to its owner) rather than in the machine's temporary folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openmaker.runtime.images.ecr import EcrTokenError, EcrTokens, is_ecr
from openmaker.runtime.images.reference import ImageReference


@dataclass(frozen=True)
class Auth:
    """The auth file skopeo is given (None: its own defaults), and why an ECR token could not
    be had for it (the pull may still work: a mirror with credentials of its own)."""

    file: Path | None
    ecr_problem: str | None = None


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
def registry_auth(
    auth_file: Path | None, reference: ImageReference, ecr: EcrTokens | None = None
) -> Iterator[Auth]:
    """The auth file to give skopeo for `reference`."""
    config = _config(auth_file) or {}
    registry = reference.registry
    if (
        ecr is not None and reference.is_registry and is_ecr(registry)
        and not has_credentials(auth_file, registry)
    ):  # fmt: skip
        try:
            token = ecr.auth(registry)
        except EcrTokenError as exc:
            with _given(auth_file) as given:
                yield Auth(given, str(exc))
            return
        auths = {**(config.get("auths") or {}), registry: {"auth": token}}
        with _private_copy({**config, "auths": auths}, ecr.folder) as path:
            yield Auth(path)
        return
    store = config.get("credsStore")
    helpers = config.get("credHelpers") or {}
    auths = config.get("auths") or {}
    if (
        not config or not isinstance(store, str) or not store or not reference.is_registry
        or registry in helpers or any(_host(key) == registry for key in auths)
    ):  # fmt: skip
        with _given(auth_file) as given:
            yield Auth(given)
        return
    with _private_copy({**config, "credHelpers": {**helpers, registry: store}}) as path:
        yield Auth(path)


@contextlib.contextmanager
def _given(auth_file: Path | None) -> Iterator[Path | None]:
    yield auth_file if auth_file is not None and auth_file.is_file() else None


@contextlib.contextmanager
def _private_copy(config: dict[str, Any], folder: Path | None = None) -> Iterator[Path]:
    """`config` as an auth file readable by its owner alone, for as long as one command."""
    if folder is not None:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="openmaker-auth-", suffix=".json", dir=folder)  # 0600
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(config, out)
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
