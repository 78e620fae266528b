"""The console's logins and sessions, kept in the server's memory (a restarted server asks the
browser to log in again).

A login is a one-time token (minted by a SigV4-signed request from `openmaker console-url`,
usable once, for a few minutes) or the server's key pair typed into the login form. Either
way the browser gets a session made afresh, never one it names itself (no fixation); a
session's CSRF token must come back in a header with each request that changes something.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from openmaker.api.credentials import Credentials

COOKIE = "openmaker-console"
CSRF_HEADER = "x-csrf-token"
TOKEN_SECONDS = 300.0
# A session ends after this long unused, and after SESSION_MAX_SECONDS whatever.
IDLE_SECONDS = 12 * 3600.0
SESSION_MAX_SECONDS = 7 * 24 * 3600.0
# Bounds on what the maps hold, so that a flood of mints or logins cannot fill the memory.
MAX_TOKENS = 100
MAX_SESSIONS = 1000
# A signed mint request is good for SigV4's 15 minutes either side of its date: each is
# honoured once within that, so one seen on the wire cannot mint another token.
SIGNATURE_SECONDS = 31 * 60.0
MAX_SIGNATURES = 1000


@dataclass
class Session:
    csrf: str
    created: float
    last_seen: float


class ConsoleAuth:
    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials
        self._tokens: dict[str, float] = {}  # token -> when it expires
        self._sessions: dict[str, Session] = {}
        self._signatures: dict[str, float] = {}  # a spent mint request's signature -> expiry
        self._lock = threading.Lock()

    def first_use(self, signature: str) -> bool:
        """Whether a verified mint request's signature is new (it is then spent). When the
        map is full of live signatures, no more are taken: only the key's holder can fill it."""
        now = time.monotonic()
        with self._lock:
            for seen in [s for s, expires in self._signatures.items() if expires < now]:
                del self._signatures[seen]
            if signature in self._signatures or len(self._signatures) >= MAX_SIGNATURES:
                return False
            self._signatures[signature] = now + SIGNATURE_SECONDS
        return True

    def mint_token(self) -> str:
        """A one-time login token (the caller has proved it holds the key pair)."""
        now = time.monotonic()
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._drop_expired(now)
            if len(self._tokens) >= MAX_TOKENS:
                del self._tokens[min(self._tokens, key=self._tokens.__getitem__)]
            self._tokens[token] = now + TOKEN_SECONDS
        return token

    def redeem(self, token: str) -> str | None:
        """A new session's id for an unused, unexpired token (which is then spent); else None."""
        now = time.monotonic()
        with self._lock:
            expires = self._tokens.pop(token, None)
        if expires is None or expires < now:
            return None
        return self._new_session(now)

    def login(self, access_key_id: str, secret_access_key: str) -> str | None:
        """A new session's id when the pair is the server's; else None."""
        key_ok = hmac.compare_digest(
            access_key_id.encode(), self._credentials.access_key_id.encode()
        )
        secret_ok = hmac.compare_digest(
            secret_access_key.encode(), self._credentials.secret_access_key.encode()
        )
        return self._new_session(time.monotonic()) if key_ok and secret_ok else None

    def session(self, session_id: str | None) -> Session | None:
        """The live session `session_id` names (its idle clock restarted), or None."""
        if not session_id:
            return None
        now = time.monotonic()
        with self._lock:
            found = self._sessions.get(session_id)
            if found is None:
                return None
            if now - found.last_seen > IDLE_SECONDS or now - found.created > SESSION_MAX_SECONDS:
                del self._sessions[session_id]
                return None
            found.last_seen = now
            return found

    def end(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def _new_session(self, now: float) -> str:
        session_id = secrets.token_urlsafe(32)
        with self._lock:
            if len(self._sessions) >= MAX_SESSIONS:  # the one unused longest goes
                oldest = min(self._sessions, key=lambda s: self._sessions[s].last_seen)
                del self._sessions[oldest]
            self._sessions[session_id] = Session(secrets.token_urlsafe(32), now, now)
        return session_id

    def _drop_expired(self, now: float) -> None:
        for token in [t for t, expires in self._tokens.items() if expires < now]:
            del self._tokens[token]


def csrf_ok(session: Session, sent: str | None) -> bool:
    return sent is not None and hmac.compare_digest(sent.encode(), session.csrf.encode())
