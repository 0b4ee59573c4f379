"""OAuth 2.0 client credentials as an ``httpx.Auth``: the access token is fetched when first
needed, cached for the process, renewed shortly before it expires and once more when the API
answers 401 (a token revoked early).

Written on httpx's auth-flow hook rather than with an OAuth library: the flow is three small
steps, and as an ``httpx.Auth`` it rides on the shared client, its timeouts and its error
mapping (``worker/http.py``). The token and the client secret are never logged.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Mapping

import httpx

from worker.errors import AuthFailed, Unavailable

# Renew this long before the token's stated expiry.
RENEW_EARLY_SECONDS = 60
# When the token endpoint states no lifetime.
DEFAULT_LIFETIME_SECONDS = 15 * 60


class ClientCredentialsAuth(httpx.Auth):
    requires_response_body = True

    def __init__(
        self,
        service: str,
        token_url: str,
        client_id: str,
        client_secret: str,
        *,
        extra: Mapping[str, str] | None = None,
        as_json: bool = False,
    ) -> None:
        self.service = service
        self.token_url = token_url
        self._form = {
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": client_secret,
            **(extra or {}),
        }
        self._as_json = as_json
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0
        # What the token answer said besides the token (Salesforce's instance_url).
        self.details: dict[str, object] = {}

    def _token_request(self) -> httpx.Request:
        if self._as_json:
            return httpx.Request("POST", self.token_url, json=self._form)
        return httpx.Request("POST", self.token_url, data=self._form)

    def _take(self, response: httpx.Response) -> None:
        try:
            body = response.json()
        except ValueError:
            body = None
        token = body.get("access_token") if isinstance(body, dict) else None
        if response.status_code != 200 or not isinstance(token, str) or not token:
            reason = None
            if isinstance(body, dict):
                reason = body.get("error_description") or body.get("error")
            message = f"token endpoint answered {response.status_code}: {reason or 'no token'}"
            status = response.status_code
            if status >= 500 or status == 429:
                raise Unavailable(message, service=self.service, status_code=status)
            # Wrong client id or secret: retrying will not change it.
            raise AuthFailed(message, service=self.service, status_code=status)
        lifetime = body.get("expires_in")
        seconds = float(lifetime) if isinstance(lifetime, int | float) else DEFAULT_LIFETIME_SECONDS
        with self._lock:
            self._token = token
            self._expires_at = time.monotonic() + max(0.0, seconds - RENEW_EARLY_SECONDS)
            self.details = {k: v for k, v in body.items() if k not in ("access_token",)}

    def _current(self) -> str | None:
        with self._lock:
            if self._token is not None and time.monotonic() < self._expires_at:
                return self._token
            return None

    def forget(self) -> None:
        with self._lock:
            self._token = None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self._current()
        if token is None:
            self._take((yield self._token_request()))
            token = self._current()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            # Revoked or expired early: one new token, one more try.
            self.forget()
            self._take((yield self._token_request()))
            request.headers["Authorization"] = f"Bearer {self._current()}"
            yield request
