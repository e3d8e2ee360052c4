"""Who is logged in to the web console: password checks, sessions, and the failed-login limit.

Passwords are checked against the ``[[web_users]]`` argon2id hashes of the live config (a user
removed or given a new password in the file is refused at the next login). A session is a random
token in an HttpOnly, SameSite=Strict cookie, held in memory only (a restart logs everyone out),
with its own CSRF token that every change must echo in ``X-CSRF-Token``. A session ends after
``[web] session_minutes`` without a request, and as soon as its user leaves the config or
changes role.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

COOKIE_NAME = "m2unet_session"
CSRF_HEADER = "X-CSRF-Token"
FAILED_LOGINS_PER_MINUTE = 5

_hasher = PasswordHasher()
# A hash to verify against when the user does not exist: the answer then takes as long as for a
# wrong password, so timing does not tell which login names exist.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    """The argon2id hash ``[[web_users]] password_hash`` holds."""
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


@dataclass
class Session:
    user: str
    role: str
    csrf_token: str
    expires: float  # monotonic seconds


@dataclass
class SessionStore:
    """Sessions by token; ``lifetime`` seconds without use end one."""

    lifetime: float
    _sessions: dict[str, Session] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def create(self, user: str, role: str) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        session = Session(user, role, secrets.token_urlsafe(32), time.monotonic() + self.lifetime)
        with self._lock:
            self._sessions[token] = session
        return token, session

    def get(self, token: str | None) -> Session | None:
        """The live session of ``token`` (its lifetime renewed), or None."""
        if not token:
            return None
        now = time.monotonic()
        with self._lock:
            for stale in [t for t, s in self._sessions.items() if s.expires <= now]:
                del self._sessions[stale]
            session = self._sessions.get(token)
            if session is not None:
                session.expires = now + self.lifetime
            return session

    def end(self, token: str | None) -> None:
        with self._lock:
            self._sessions.pop(token or "", None)


@dataclass
class LoginLimiter:
    """At most ``limit`` failed logins per client within ``window`` seconds."""

    limit: int = FAILED_LOGINS_PER_MINUTE
    window: float = 60.0
    _failures: dict[str, deque] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _recent(self, client: str, now: float) -> deque:
        failures = self._failures.setdefault(client, deque())
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        return failures

    def blocked_for(self, client: str) -> float:
        """Seconds until ``client`` may try again (0: it may now)."""
        now = time.monotonic()
        with self._lock:
            failures = self._recent(client, now)
            return max(0.0, failures[0] + self.window - now) if len(failures) >= self.limit else 0.0

    def failed(self, client: str) -> None:
        with self._lock:
            self._recent(client, time.monotonic()).append(time.monotonic())

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)
