"""Checking the ``Authorization`` header the way VideoSDK documents it.

The header holds the raw JWT (no ``Bearer `` or ``Basic `` prefix), signed HS256 with the
account's secret, with the claims ``apikey``, ``permissions``, ``version: 2``,
``roles: ["crawler"]`` (server-side API only), ``iat`` and ``exp``. Every failure answers the
same 401 as the real service, plus a ``detail`` naming the broken rule to help developers, and a
catalogue code: 4001 for a wrong API key, 4008 for permissions or roles, 4002 otherwise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TypeGuard

import jwt
from jwt.algorithms import HMACAlgorithm

from worker.sandbox.messages import ApiError

INVALID_TOKEN = "Token is invalid or expired"  # noqa: S105 (a message, not a password)
PREFIXES = ("Bearer", "Basic")
PERMISSIONS = frozenset({"allow_join", "ask_join", "allow_mod"})
API_VERSION = 2
CODE_API_KEY, CODE_TOKEN, CODE_PERMISSIONS = 4001, 4002, 4008


class _HS256(HMACAlgorithm):
    """HS256 without pyjwt's short-key warning.

    The sandbox's secret is its own fixture (the default one is short on purpose, easy to type);
    warning on every request would only turn into errors under ``-W error``.
    """

    def __init__(self) -> None:
        super().__init__(HMACAlgorithm.SHA256)

    def check_key_length(self, key: bytes) -> str | None:
        return None


def _refuse(detail: str, code: int = CODE_TOKEN) -> ApiError:
    return ApiError(401, INVALID_TOKEN, code=code, detail=detail)


def split_prefix(header: str) -> tuple[str | None, str]:
    """Split a ``Bearer ``/``Basic `` prefix (any case) off the header: ``(prefix, rest)``."""
    for prefix in PREFIXES:
        if header[: len(prefix) + 1].lower() == prefix.lower() + " ":
            return prefix, header[len(prefix) + 1 :].strip()
    return None, header.strip()


def peek_claims(token: str) -> dict[str, Any] | None:
    """The token's claims decoded without any verification, or None when it is not a JWT."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    return claims if isinstance(claims, dict) else None


@dataclass(frozen=True, slots=True)
class _Reading:
    """What a token says (unverified) and, time aside, why it is refused (None: it is not)."""

    claims: dict[str, Any] | None
    refusal: tuple[str, int] | None  # (detail, code) of the 401


class TokenVerifier:
    """Verifies tokens for one API key and secret; safe to share between threads.

    Readings are cached per token: clients reuse a token for minutes, and pyjwt's decoding costs
    about 100 µs, which a benchmark would notice. Only the clock-dependent checks run each time.
    """

    def __init__(self, api_key: str, secret: str, *, cache_size: int = 1024) -> None:
        self._api_key = api_key
        self._secret = secret
        # Only HS256 is registered, so "none", HS512, RS256... are all refused by pyjwt itself.
        self._jws = jwt.PyJWS(algorithms=[])
        self._jws.register_algorithm("HS256", _HS256())
        self._cache: dict[str, _Reading] = {}
        self._cache_size = cache_size

    def verify(self, header: str | None, now: float) -> dict[str, Any]:
        """The verified claims of the ``Authorization`` header; raises a 401 :class:`ApiError`."""
        if not header:
            raise _refuse("the Authorization header is missing")
        prefix, _ = split_prefix(header)
        if prefix is not None:
            raise _refuse(f"send the raw token in Authorization, without the '{prefix} ' prefix")
        reading = self._read(header.strip())
        claims, refusal = reading.claims, reading.refusal
        if refusal is not None or claims is None:
            detail, code = refusal or ("the token could not be read", CODE_TOKEN)
            raise _refuse(detail, code)
        _check_times(claims, now)
        return dict(claims)  # the cached reading must not be changed by a caller

    def claims(self, token: str) -> dict[str, Any] | None:
        """The token's claims, not verified (a copy), or None when it is not a JWT."""
        claims = self._read(token).claims
        return None if claims is None else dict(claims)

    def _read(self, token: str) -> _Reading:
        reading = self._cache.get(token)
        if reading is None:
            reading = self._read_afresh(token)
            if len(self._cache) >= self._cache_size:
                self._cache.clear()  # crude but bounded; a dict op is atomic under the GIL
            self._cache[token] = reading
        return reading

    def _read_afresh(self, token: str) -> _Reading:
        try:
            claims = self._signed_claims(token)
            _check_claims(claims, self._api_key)
        except ApiError as refusal:
            return _Reading(peek_claims(token), (refusal.detail or "", refusal.code or CODE_TOKEN))
        return _Reading(claims, None)

    def _signed_claims(self, token: str) -> dict[str, Any]:
        try:
            signed = self._jws.decode_complete(token, key=self._secret, algorithms=["HS256"])
        except jwt.InvalidAlgorithmError:
            raise _refuse("the token must be signed with HS256") from None
        except jwt.InvalidSignatureError:
            raise _refuse("the signature does not match the secret") from None
        except jwt.PyJWTError:
            raise _refuse("the Authorization header is not a JWT") from None
        try:
            claims = json.loads(signed["payload"])
        except ValueError:
            claims = None
        if not isinstance(claims, dict):
            raise _refuse("the token's payload is not a JSON object")
        return claims


def _check_claims(claims: dict[str, Any], api_key: str) -> None:
    if claims.get("apikey") != api_key:
        raise _refuse("the apikey claim does not match the API key", CODE_API_KEY)
    permissions = claims.get("permissions")
    if not isinstance(permissions, list) or not permissions:
        raise _refuse("permissions must be a non-empty list", CODE_PERMISSIONS)
    if not all(isinstance(p, str) and p in PERMISSIONS for p in permissions):
        raise _refuse(f"permissions must be taken from {sorted(PERMISSIONS)}", CODE_PERMISSIONS)
    if "ask_join" in permissions and len(set(permissions)) > 1:
        raise _refuse("ask_join cannot be combined with other permissions", CODE_PERMISSIONS)
    version = claims.get("version")
    if type(version) is not int or version != API_VERSION:  # refuses True and 2.0 too
        raise _refuse(f"the version claim must be {API_VERSION}")
    roles = claims.get("roles")
    if not isinstance(roles, list) or "crawler" not in roles:
        raise _refuse("roles must include 'crawler' to call the server API", CODE_PERMISSIONS)


def _number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_times(claims: dict[str, Any], now: float) -> None:
    # Checked here rather than by pyjwt so that the sandbox's clock, not the host's, decides.
    exp: object = claims.get("exp")
    if not _number(exp):
        raise _refuse("the exp claim is required (a number of seconds)")
    if not _number(claims.get("iat")):
        raise _refuse("the iat claim is required (a number of seconds)")
    nbf: object = claims.get("nbf")
    if exp <= now:
        raise _refuse(f"the token expired {now - exp:.0f} s ago")
    if nbf is not None and (not _number(nbf) or nbf > now):
        raise _refuse("the token is not valid yet (nbf)")
