"""Sign-in sessions: kept in the console's memory, named by a signed, expiring cookie.

The api key a user signs in with stays in this process (the controller needs it on every call): the
cookie holds only a random session id, signed with a per-process secret (itsdangerous) and stamped, so a
forged, altered or expired cookie is refused before the store is even consulted, and the store expires the
session on its own clock too. A restart of the console signs everyone out.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner

COOKIE_NAME = "relay_console"
#: The pre-sign-in cookie that carries the sign-in form's CSRF token (double submit).
SIGNIN_COOKIE_NAME = "relay_console_signin"
DEFAULT_SESSION_SECONDS = 8 * 3600
ROLE_ADMIN = "admin"
ROLE_VIEW = "view"


@dataclass
class Session:
    session_id: str
    api_key: str
    role: str
    csrf_token: str
    expires_at: float
    #: Who, in logs and on pages: a prefix of the key's SHA-256 digest (never the key).
    who: str
    flashes: list[tuple[str, str]] = field(default_factory=list)

    @property
    def is_admin(self) -> bool:
        return self.role == ROLE_ADMIN

    def flash(self, kind: str, text: str) -> None:
        self.flashes.append((kind, text))
        del self.flashes[:-5]

    def take_flashes(self) -> list[tuple[str, str]]:
        flashes, self.flashes = self.flashes, []
        return flashes


def key_label(api_key: str) -> str:
    return "sha256:" + hashlib.sha256(api_key.encode()).hexdigest()[:12]


class _Signer(TimestampSigner):
    """A TimestampSigner on the store's clock (tests move it forward to expire a cookie)."""

    def __init__(self, secret: bytes, clock: Callable[[], float]):
        super().__init__(secret, salt="relay-console-session")
        self._clock = clock

    def get_timestamp(self) -> int:
        return int(self._clock())


class SessionStore:
    def __init__(
        self,
        secret: bytes | None = None,
        max_age: float = DEFAULT_SESSION_SECONDS,
        clock: Callable[[], float] = time.time,
        max_sessions: int = 1000,
    ):
        self.max_age = max_age
        self._clock = clock
        self._signer = _Signer(secret or secrets.token_bytes(32), clock)
        self._sessions: dict[str, Session] = {}
        self._max_sessions = max_sessions

    def create(self, api_key: str, role: str) -> tuple[Session, str]:
        """A new session and the cookie value that names it."""
        self._expire()
        if len(self._sessions) >= self._max_sessions:
            oldest = min(self._sessions.values(), key=lambda s: s.expires_at)
            self._sessions.pop(oldest.session_id, None)
        session = Session(
            session_id=secrets.token_urlsafe(32),
            api_key=api_key,
            role=role,
            csrf_token=secrets.token_urlsafe(32),
            expires_at=self._clock() + self.max_age,
            who=key_label(api_key),
        )
        self._sessions[session.session_id] = session
        return session, self._signer.sign(session.session_id).decode()

    def get(self, cookie: str | None) -> Session | None:
        """The live session a cookie names; None for no, a forged, an altered or an expired cookie."""
        if not cookie:
            return None
        try:
            session_id = self._signer.unsign(cookie, max_age=int(self.max_age)).decode()
        except (SignatureExpired, BadSignature):
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if session.expires_at <= self._clock():
            self._sessions.pop(session_id, None)
            return None
        return session

    def end(self, session: Session) -> None:
        self._sessions.pop(session.session_id, None)

    def sign(self, value: str) -> str:
        return self._signer.sign(value).decode()

    def unsign(self, value: str | None, max_age: float) -> str | None:
        if not value:
            return None
        try:
            return self._signer.unsign(value, max_age=int(max_age)).decode()
        except (SignatureExpired, BadSignature):
            return None

    def _expire(self) -> None:
        now = self._clock()
        for session_id in [s.session_id for s in self._sessions.values() if s.expires_at <= now]:
            del self._sessions[session_id]
