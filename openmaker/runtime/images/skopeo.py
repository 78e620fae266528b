"""skopeo, run the way every pull needs it: registry credentials from a Docker auth file
(named by path, never put on a command line; its credential helpers are skopeo's to call),
plain HTTP where the registry is listed as insecure, the containers' registries.conf (mirrors)
a setting names, its output turned into progress, and its failures into a sentence for a person.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from openmaker.runtime.images import process
from openmaker.runtime.images.auth import ecr_advice, registry_auth
from openmaker.runtime.images.ecr import EcrTokens
from openmaker.runtime.images.process import Cancelled, Interrupted
from openmaker.runtime.images.reference import ImageReference

# Receives one line for a person about the pull under way ("layer 2 of 5: sha256:ab12…").
OnProgress = Callable[[str], None]
# What skopeo says last when it fails: `time="…" level=fatal msg="…"`.
_FATAL = re.compile(r'level=fatal msg="(.*)"\s*$')
_BLOB = re.compile(r"^Copying blob (?:sha256:)?([0-9a-f]{6,64})(.*)$")


class PullError(RuntimeError):
    """An image that could not be pulled; the message names it and says why."""


class PullStopped(PullError):
    """The pull was interrupted because what it was for was stopped."""


@dataclass(frozen=True)
class RegistryAccess:
    """How registries are reached: the Docker auth file with their credentials, and the
    registries spoken to over plain HTTP (or without checking certificates)."""

    auth_file: Path | None = None
    insecure: tuple[str, ...] = ()
    # A registries.conf of the user's (mirrors, insecure registries) read instead of the
    # machine's /etc/containers/registries.conf (its drop-ins are read either way).
    registries_conf: Path | None = None
    # Where tokens come from for ECR registries with no credentials configured (None: nowhere).
    ecr: EcrTokens | None = None

    def command(self, verb: str) -> list[str]:
        """`skopeo VERB` with the options every command takes."""
        conf = [f"--registries-conf={self.registries_conf}"] if self.registries_conf else []
        return ["skopeo", *conf, verb]

    def options(self, reference: ImageReference, auth: Path | None, side: str = "") -> list[str]:
        """skopeo's options for reaching `reference` with the auth file `auth`; `side` is
        "src-" for a copy's source."""
        if not reference.is_registry:
            return []
        options = [f"--{side}authfile={auth}"] if auth is not None else []
        if reference.registry in self.insecure:
            options.append(f"--{side}tls-verify=false")
        return options


def skopeo_missing() -> str | None:
    """Why images cannot be pulled here, or None."""
    return None if shutil.which("skopeo") else "skopeo (Debian package skopeo) is not installed"


def inspect_raw(
    reference: ImageReference, access: RegistryAccess, cancelled: Cancelled = process.never
) -> bytes:
    """The manifest (or manifest list) the registry serves for `reference`, byte for byte:
    its sha256 is the digest the registry knows the image by."""
    with registry_auth(access.auth_file, reference, access.ecr) as auth:
        argv = [*access.command("inspect"), "--raw", *access.options(reference, auth.file)]
        done = _run([*argv, reference.skopeo_name()], reference, cancelled)
    if done.code != 0:
        raise PullError(explain(reference, done.stderr, access, auth.ecr_problem))
    return done.stdout


def resolve(
    reference: ImageReference, access: RegistryAccess, cancelled: Cancelled = process.never
) -> tuple[str, bytes]:
    """The digest the registry serves `reference` by now, and that manifest (`inspect_raw`)."""
    raw = inspect_raw(reference, access, cancelled)
    return "sha256:" + hashlib.sha256(raw).hexdigest(), raw


def copy(
    source: ImageReference,
    source_name: str,
    destination: str,
    access: RegistryAccess,
    on_progress: OnProgress,
    layers: int | None,
    cancelled: Cancelled = process.never,
) -> None:
    """`skopeo copy` from `source_name` (skopeo's syntax; `source` for its options and errors)
    into `destination`, telling `on_progress` of each layer as it starts. PullStopped once
    `cancelled()` (the copy killed)."""
    seen = 0

    def progress(line: str) -> None:
        nonlocal seen
        if match := _BLOB.match(line):
            seen += 1
            of = f" of {layers}" if layers else ""
            cached = " (cached)" if "skipped" in match.group(2) else ""
            on_progress(f"layer {seen}{of}: sha256:{match.group(1)[:12]}{cached}")

    with registry_auth(access.auth_file, source, access.ecr) as auth:
        argv = [*access.command("copy"), *access.options(source, auth.file, "src-")]
        done = _run([*argv, source_name, destination], source, cancelled, progress)
    if done.code != 0:
        raise PullError(explain(source, done.stderr, access, auth.ecr_problem))


def _run(
    argv: list[str],
    reference: ImageReference,
    cancelled: Cancelled,
    on_line: Callable[[str], None] | None = None,
) -> process.Finished:
    try:
        return process.run(argv, cancelled, on_line)
    except Interrupted:
        raise PullStopped(f"The pull of {reference} was stopped") from None


def explain(
    reference: ImageReference,
    stderr: str,
    access: RegistryAccess | None = None,
    ecr_problem: str | None = None,
) -> str:
    """skopeo's failure as a sentence naming the image and what the registry said."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    said = lines[-1] if lines else "skopeo failed without a message"
    if match := _FATAL.search(said):
        said = match.group(1).replace('\\"', '"')
    low = said.lower()
    if "manifest unknown" in low or "name unknown" in low or "not found" in low:
        why = "the registry has no such image"
    elif "unauthorized" in low or "denied" in low or "authentication required" in low:
        why = "the registry refused access (check the credentials in the Docker auth file)"
    elif "connection refused" in low or "no such host" in low or "dial tcp" in low:
        why = "the registry could not be reached"
    elif "http response to https client" in low:
        why = "the registry speaks plain HTTP (list it in OPENMAKER_INSECURE_REGISTRIES)"
    else:
        why = "the pull failed"
    if ecr_problem is not None:
        # A mirror that lacks the image said so: that stays the first reason.
        why = f"{why}; {ecr_problem}" if why.endswith("no such image") else ecr_problem
    elif access is not None and access.ecr is None:
        why = ecr_advice(access.auth_file, reference) or why
    return f"Cannot pull {reference}: {why}. The registry said: {said[:600]}"
