"""Fixtures: a real SandboxServer per test, a requests session, and tokens minted with pyjwt."""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest
import requests

from worker.sandbox import Sandbox, SandboxServer

API_KEY = "test-key"
# 32 bytes, so that pyjwt does not warn about a short HMAC key (warnings are errors here).
SECRET = "test-secret-0123456789abcdef0123"


class Clock:
    """A settable clock, in epoch seconds."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Api:
    """Speaks to a sandbox over HTTP the way a VideoSDK client does, with a valid token."""

    def __init__(self, url: str, session: requests.Session, token: str) -> None:
        self.url = url
        self.session = session
        self.token = token

    def post(self, path: str, body: Any = None, *, headers: Any = None, **kw: Any):
        """POST ``body`` as JSON (or ``data=`` bytes); ``headers`` override (None removes one)."""
        sent = {"Authorization": self.token, "Content-Type": "application/json"}
        sent.update(headers or {})
        if body is not None:
            kw["data"] = json.dumps(body).encode()
        kw.setdefault("timeout", 5)
        return self.session.post(self.url + path, headers=sent, **kw)

    def get(self, path: str, params: Any = None, *, headers: Any = None, **kw: Any):
        """GET with a valid token unless ``headers`` say otherwise."""
        sent = {"Authorization": self.token, **(headers or {})}
        kw.setdefault("timeout", 5)
        return self.session.get(self.url + path, params=params, headers=sent, **kw)


@pytest.fixture
def clock():
    return Clock(1_800_000_000.0)


@pytest.fixture
def start_server(clock):
    """Start a sandbox server (keywords go to Sandbox); every one is closed after the test."""
    servers: list[SandboxServer] = []

    def start(**kwargs: Any) -> SandboxServer:
        kwargs.setdefault("clock", clock)
        server = SandboxServer(Sandbox(API_KEY, SECRET, **kwargs))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def server(start_server):
    return start_server()


@pytest.fixture
def sandbox(server):
    return server.sandbox


@pytest.fixture
def http():
    with requests.Session() as session:
        yield session


@pytest.fixture
def mint(clock):
    """Mint a token: the recommended worker claims, ``overrides`` applied (None drops one)."""

    def mint(secret: str = SECRET, algorithm: str = "HS256", **overrides: Any) -> str:
        claims: dict[str, Any] = {
            "apikey": API_KEY,
            "permissions": ["allow_join"],
            "version": 2,
            "roles": ["crawler"],
            "iat": int(clock.now),
            "exp": int(clock.now) + 600,
        }
        claims.update(overrides)
        claims = {name: value for name, value in claims.items() if value is not None}
        return jwt.encode(claims, secret, algorithm=algorithm)

    return mint


@pytest.fixture
def api(server, http, mint):
    return Api(server.url, http, mint())
