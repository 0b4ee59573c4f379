"""Console sign-in: a signed session cookie, a CSRF token per session, a sign-in rate limit.

The cookie is signed with itsdangerous (a maintained library) using a random key kept in Redis
(created once, shared by every web process and host), not the password itself: a cookie
handed to anyone who opens the sign-in page must not let them test password guesses offline.
The session carries an HMAC of the password in force, so changing ``CONSOLE_PASSWORD`` signs
everyone out, and the id of a signed-in session kept in Redis for its lifetime, so signing out
ends it on the server too (a copied cookie stops working).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

import redis
from itsdangerous import BadSignature, URLSafeTimedSerializer
from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import Response

from config import Rate
from worker.ratelimit import SharedRateLimiter

COOKIE = "ve_console"
SESSION_SECONDS = 12 * 3600
# Sign-in attempts per client address.
SIGN_IN_RATE = Rate(5, 60)
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


@dataclass
class Session:
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    signed_in: bool = False
    password_mark: str = ""
    session_id: str = ""
    changed: bool = False


class ConsoleAuth:
    def __init__(
        self, password: SecretStr, client: redis.Redis, prefix: str, limiter: SharedRateLimiter
    ) -> None:
        self._password = password
        self._redis = client
        self._prefix = prefix
        self._limiter = limiter
        self._serializer: URLSafeTimedSerializer | None = None

    def _signer(self) -> URLSafeTimedSerializer:
        if self._serializer is None:
            key_name = f"{self._prefix}console:signing-key"
            self._redis.set(key_name, secrets.token_hex(32), nx=True)
            key = self._redis.get(key_name)
            self._serializer = URLSafeTimedSerializer(key, salt="visitor-enrich.console")
        return self._serializer

    def _mark(self) -> str:
        key = self._signer().secret_key
        password = self._password.get_secret_value().encode()
        return hmac.new(key, password, hashlib.sha256).hexdigest()[:32]

    # Sessions -------------------------------------------------------------------------------

    def load(self, request: Request) -> Session:
        raw = request.cookies.get(COOKIE)
        if raw:
            try:
                data = self._signer().loads(raw, max_age=SESSION_SECONDS)
            except BadSignature:
                data = None
            if isinstance(data, dict) and isinstance(data.get("csrf"), str):
                session = Session(
                    csrf=data["csrf"],
                    password_mark=str(data.get("pw", "")),
                    session_id=str(data.get("sid", "")),
                )
                session.signed_in = (
                    bool(data.get("in"))
                    and hmac.compare_digest(session.password_mark, self._mark())
                    and bool(session.session_id)
                    and bool(self._redis.exists(self._session_key(session.session_id)))
                )
                return session
        return Session(changed=True)

    def save(self, request: Request, response: Response, session: Session) -> None:
        value = self._signer().dumps(
            {
                "csrf": session.csrf,
                "in": session.signed_in,
                "pw": session.password_mark,
                "sid": session.session_id,
            }
        )
        response.set_cookie(
            COOKIE,
            value,
            max_age=SESSION_SECONDS,
            path="/console",
            httponly=True,
            samesite="strict",
            secure=(request.url.hostname or "") not in LOCAL_HOSTS,
        )

    # Checks ---------------------------------------------------------------------------------

    def csrf_ok(self, session: Session, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(session.csrf.encode(), str(given).encode())

    def password_ok(self, given: str) -> bool:
        expected = self._password.get_secret_value().encode()
        return hmac.compare_digest(given.encode(), expected)

    def sign_in_wait(self, client_address: str) -> float:
        """0 when this address may try to sign in now, else seconds until it may."""
        return self._limiter.try_acquire(f"console-sign-in:{client_address}", SIGN_IN_RATE)

    def _session_key(self, session_id: str) -> str:
        return f"{self._prefix}console:session:{session_id}"

    def signed_in(self) -> Session:
        """A fresh session after a good password (a new id and CSRF token: no fixation)."""
        session = Session(
            signed_in=True,
            password_mark=self._mark(),
            session_id=secrets.token_urlsafe(24),
            changed=True,
        )
        self._redis.set(self._session_key(session.session_id), 1, ex=SESSION_SECONDS)
        return session

    def sign_out(self, session: Session) -> None:
        if session.session_id:
            self._redis.delete(self._session_key(session.session_id))
