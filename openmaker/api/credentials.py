"""The server's access key pair: configured, or generated once into `$OPENMAKER_HOME`."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass

from openmaker.settings import Settings

# Where the pair may be given (read by openmaker/settings.py).
KEY_VARIABLE = "OPENMAKER_ACCESS_KEY_ID"
SECRET_VARIABLE = "OPENMAKER_SECRET_ACCESS_KEY"


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str


def configured_credentials(settings: Settings) -> Credentials | None:
    """The pair from the environment, else the stored one; None when there is neither yet."""
    if settings.server_key_pair is not None:
        return Credentials(*settings.server_key_pair)
    try:
        stored = json.loads((settings.home / "credentials.json").read_text())
    except FileNotFoundError:
        return None
    return Credentials(stored["aws_access_key_id"], stored["aws_secret_access_key"])


def server_credentials(settings: Settings) -> Credentials:
    """The pair clients sign with: from the environment when both variables are set, else the
    pair stored in `$OPENMAKER_HOME/credentials.json`, made on first use (readable by its owner
    only)."""
    known = configured_credentials(settings)
    if known is not None:
        return known
    path = settings.home / "credentials.json"
    settings.home.mkdir(parents=True, exist_ok=True)
    # AWS-like shapes: 20 upper-case characters for the key, 40 for the secret.
    made = Credentials("OMK" + secrets.token_hex(16)[:17].upper(), secrets.token_urlsafe(30))
    data = {
        "aws_access_key_id": made.access_key_id,
        "aws_secret_access_key": made.secret_access_key,
    }
    temporary = path.with_name(f".credentials.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(data, handle)
    try:
        # Two first starts at once: the first pair stored wins, both then read it.
        os.link(temporary, path)
    except FileExistsError:
        pass
    finally:
        temporary.unlink()
    stored = json.loads(path.read_text())
    return Credentials(stored["aws_access_key_id"], stored["aws_secret_access_key"])
