"""Tokens: least privilege, short-lived, reused until shortly before expiry, thread-safe."""

from __future__ import annotations

import threading

import jwt
import pytest

from worker.settings import Credentials, Secret
from worker.tokens import TokenSigner

SECRET = "s3cret-long-enough-for-hs256-keys"
CREDENTIALS = Credentials(api_key="key-1", secret=Secret(SECRET))


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def claims(token: str) -> dict:
    return jwt.decode(
        token, SECRET, algorithms=["HS256"], options={"verify_exp": False, "verify_iat": False}
    )


class TestTokenSigner:
    def test_the_token_carries_the_least_privilege_claims(self):
        """HS256, apikey, allow_join only, version 2, the crawler role, iat and exp."""
        clock = Clock()
        token = TokenSigner(CREDENTIALS, ttl=600, clock=clock).token()
        assert jwt.get_unverified_header(token)["alg"] == "HS256"
        assert claims(token) == {
            "apikey": "key-1",
            "permissions": ["allow_join"],
            "version": 2,
            "roles": ["crawler"],
            "iat": int(clock.now),
            "exp": int(clock.now) + 600,
        }

    def test_the_token_is_reused_while_it_has_life_left(self):
        """Two calls within the lifetime return the same token."""
        clock = Clock()
        signer = TokenSigner(CREDENTIALS, ttl=600, refresh_margin=60, clock=clock)
        first = signer.token()
        clock.now += 539
        assert signer.token() == first

    def test_a_token_close_to_expiry_is_replaced(self):
        """Within the refresh margin of its expiry a new token is minted."""
        clock = Clock()
        signer = TokenSigner(CREDENTIALS, ttl=600, refresh_margin=60, clock=clock)
        first = signer.token()
        clock.now += 541
        second = signer.token()
        assert second != first
        assert claims(second)["exp"] == int(clock.now) + 600

    def test_threads_share_one_token(self):
        """Many threads asking at once all get the same token."""
        signer = TokenSigner(CREDENTIALS)
        seen: set[str] = set()
        lock = threading.Lock()

        def ask() -> None:
            token = signer.token()
            with lock:
                seen.add(token)

        threads = [threading.Thread(target=ask) for _ in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(seen) == 1

    def test_a_reader_interrupted_by_a_refresh_never_gets_an_expired_token(self):
        """After a long idle the cached token has expired. A thread that loses the GIL right
        after reading the cache, while another replaces the token, must not hand out the old
        token (with the new one's expiry): VideoSDK would refuse it, and the job would fail."""
        clock = Clock()
        timed, paused, resume = threading.Event(), threading.Event(), threading.Event()

        class Interrupted(TokenSigner):
            """Pauses the reader thread after the first thing it reads once it has the time."""

            def __getattribute__(self, name: str) -> object:
                value = object.__getattribute__(self, name)
                reader = threading.current_thread().name == "reader"
                if reader and name == "_clock":
                    timed.set()
                elif reader and timed.is_set() and not paused.is_set():
                    paused.set()
                    resume.wait(5)
                return value

        signer = Interrupted(CREDENTIALS, ttl=600, refresh_margin=60, clock=clock)
        old = signer.token()
        clock.now += 3600
        got: dict[str, str] = {}
        reader = threading.Thread(target=lambda: got.update(r=signer.token()), name="reader")
        reader.start()
        assert paused.wait(5)
        writer = threading.Thread(target=lambda: got.update(w=signer.token()), name="writer")
        writer.start()
        writer.join(5)
        resume.set()
        reader.join(5)
        assert got["r"] != old
        assert claims(got["r"])["exp"] > clock.now

    def test_a_margin_as_long_as_the_lifetime_is_refused(self):
        """A token that must be refreshed before it is minted makes no sense."""
        with pytest.raises(ValueError, match="refresh_margin"):
            TokenSigner(CREDENTIALS, ttl=60, refresh_margin=60)
