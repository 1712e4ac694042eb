"""Signing VideoSDK tokens: the least privilege a worker needs, reused until shortly before expiry.

The token follows ``videosdk-api.md``: HS256 with the account secret, ``apikey``,
``permissions: ["allow_join"]``, ``version: 2`` (mandatory because ``roles`` is present) and
``roles: ["crawler"]`` so that a leaked token can call the server API but never join a meeting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import jwt

from worker.settings import Credentials

PERMISSIONS = ("allow_join",)
ROLES = ("crawler",)


class TokenSigner:
    """Mints short-lived tokens and hands out the current one, safe across threads.

    A token is reused while more than ``refresh_margin`` seconds of its life remain, so a call
    never leaves with a token that could expire in flight.
    """

    def __init__(
        self,
        credentials: Credentials,
        *,
        ttl: int = 600,
        refresh_margin: int = 60,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if refresh_margin >= ttl:
            raise ValueError("refresh_margin must be shorter than the token's ttl")
        self._credentials = credentials
        self._ttl = ttl
        self._margin = refresh_margin
        self._clock = clock
        self._lock = threading.Lock()
        self._current: tuple[str, float] = ("", 0.0)
        """The token and when it expires, in one attribute: read in one step without the lock,
        so a reader never pairs one token with another's expiry."""

    def token(self) -> str:
        """The current token, minted afresh when the cached one is close to expiry."""
        now = self._clock()
        token, expires_at = self._current
        if token and now < expires_at - self._margin:
            return token
        with self._lock:
            token, expires_at = self._current
            if not token or now >= expires_at - self._margin:
                self._current = self._mint(now)
            return self._current[0]

    def _mint(self, now: float) -> tuple[str, float]:
        issued = int(now)
        expires = issued + self._ttl
        claims = {
            "apikey": self._credentials.api_key,
            "permissions": list(PERMISSIONS),
            "version": 2,
            "roles": list(ROLES),
            "iat": issued,
            "exp": expires,
        }
        secret = self._credentials.secret.reveal()
        return jwt.encode(claims, secret, algorithm="HS256"), float(expires)
