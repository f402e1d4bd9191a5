"""The console's login session: a signed cookie naming the actor, and its CSRF token.

The cookie holds ``{"actor": ..., "sid": ...}`` signed (HMAC-SHA1 via itsdangerous, with a
timestamp checked against the session's lifetime) under a key derived from the API token, so
it never carries the token itself, every coordinator instance with the same token accepts it,
and changing the token ends every session. It is ``HttpOnly`` (no script reads it),
``SameSite=Strict`` (no other site's page sends it) and ``Secure`` unless configured off.

Every POST but the login carries a CSRF token, an HMAC of the session id: a page of the
console has it, another site cannot compute it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer

from coordinator.config import HttpSettings

__all__ = ["COOKIE_NAME", "CSRF_FIELD", "CSRF_HEADER", "ConsoleSession", "SessionSigner"]

COOKIE_NAME = "saga_console"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"

_ACTOR = re.compile(r"^[\w.@ -]{1,64}$")


@dataclass(frozen=True)
class ConsoleSession:
    """A logged-in operator: who (``actor``, recorded with every action) and the session id."""

    actor: str
    sid: str


class SessionSigner:
    """Issues and checks session cookies and CSRF tokens for one token configuration."""

    def __init__(self, settings: HttpSettings) -> None:
        token = settings.token.get_secret_value() if settings.token is not None else ""
        self._token = token
        self._ttl_s = settings.console.session_ttl_s
        key = hmac.new(token.encode(), b"saga-console-session-key", hashlib.sha256).digest()
        self._key = key
        self._serializer = URLSafeTimedSerializer(key.hex(), salt="saga-console-session")

    @property
    def can_log_in(self) -> bool:
        """False when no API token is configured: nobody can log in."""
        return bool(self._token)

    def check_token(self, offered: str) -> bool:
        """Whether ``offered`` is the API token (constant-time)."""
        return self.can_log_in and hmac.compare_digest(offered.encode(), self._token.encode())

    @staticmethod
    def check_actor(name: str) -> str:
        """The operator's name as recorded in history.

        Raises:
            ValueError: Empty, too long, or with characters other than letters, digits and
                ``. _ @ -`` and spaces.
        """
        name = name.strip()
        if not _ACTOR.match(name):
            raise ValueError("your name: 1 to 64 letters, digits, spaces or . _ @ -")
        return name

    def issue(self, actor: str) -> tuple[ConsoleSession, str]:
        """A new session for ``actor`` and its cookie value."""
        session = ConsoleSession(actor=actor, sid=secrets.token_urlsafe(16))
        return session, self._serializer.dumps({"actor": session.actor, "sid": session.sid})

    def read(self, cookie: str | None) -> ConsoleSession | None:
        """The session a cookie holds, or None if absent, forged, expired or unusable."""
        if not cookie or not self.can_log_in:
            return None
        try:
            value = self._serializer.loads(cookie, max_age=self._ttl_s)
        except BadSignature:  # SignatureExpired is a BadSignature too
            return None
        if not isinstance(value, dict):
            return None
        actor, sid = value.get("actor"), value.get("sid")
        if not isinstance(actor, str) or not isinstance(sid, str):
            return None
        return ConsoleSession(actor=actor, sid=sid)

    def csrf_token(self, session: ConsoleSession) -> str:
        """The CSRF token of ``session``'s forms."""
        return hmac.new(self._key, b"csrf:" + session.sid.encode(), hashlib.sha256).hexdigest()

    def check_csrf(self, session: ConsoleSession, offered: str | None) -> bool:
        """Whether ``offered`` is ``session``'s CSRF token (constant-time)."""
        return offered is not None and hmac.compare_digest(
            offered.encode(), self.csrf_token(session).encode()
        )
