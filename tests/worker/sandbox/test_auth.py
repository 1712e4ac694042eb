"""Authentication: the raw HS256 JWT with the claims VideoSDK documents, checked on every call."""

from __future__ import annotations

import jwt
import pytest

from worker.sandbox import DEFAULT_API_KEY, DEFAULT_SECRET, Sandbox, SandboxServer

START = "/v2/recordings/start"


def refusal(response):
    assert response.status_code == 401
    body = response.json()
    assert body["message"] == "Token is invalid or expired"
    assert body["statusCode"] == 401
    assert body["error"] == "Unauthorized"
    return body


class TestAuthorizationHeader:
    def test_a_raw_token_with_the_recommended_claims_is_accepted(self, api):
        """The worker's recommended token starts a recording."""
        assert api.post(START, {"roomId": "r1"}).status_code == 200

    def test_a_missing_header_is_refused(self, api):
        """No Authorization header answers 401 and says it is missing."""
        body = refusal(api.post(START, {"roomId": "r1"}, headers={"Authorization": None}))
        assert "missing" in body["detail"]

    @pytest.mark.parametrize("prefix", ["Bearer", "Basic", "bearer"])
    def test_a_bearer_or_basic_prefix_is_refused(self, api, sandbox, prefix):
        """A prefixed token is refused, and the call log says which prefix was sent."""
        headers = {"Authorization": f"{prefix} {api.token}"}
        body = refusal(api.post(START, {"roomId": "r1"}, headers=headers))
        assert "prefix" in body["detail"]
        assert sandbox.calls[0].auth_prefix == prefix.capitalize()
        assert not sandbox.recording_running("r1")

    def test_a_header_that_is_not_a_jwt_is_refused(self, api):
        """Garbage in the header answers 401."""
        body = refusal(api.post(START, {"roomId": "r1"}, headers={"Authorization": "nope"}))
        assert "not a JWT" in body["detail"]

    def test_a_token_signed_with_another_secret_is_refused(self, api, mint):
        """The signature must match the sandbox's secret."""
        token = mint(secret="another-secret-0123456789abcdef0")
        body = refusal(api.post(START, {"roomId": "r1"}, headers={"Authorization": token}))
        assert "signature" in body["detail"]

    @pytest.mark.parametrize("algorithm", ["HS512", "none"])
    def test_a_token_not_signed_with_hs256_is_refused(self, api, mint, algorithm):
        """HS512 and unsigned tokens are refused even with the right claims."""
        secret = "x" * 64 if algorithm != "none" else None
        token = mint(secret=secret, algorithm=algorithm)
        body = refusal(api.post(START, {"roomId": "r1"}, headers={"Authorization": token}))
        assert "HS256" in body["detail"]


class TestClaims:
    @pytest.mark.parametrize(
        ("overrides", "detail", "code"),
        [
            ({"apikey": "someone-else"}, "apikey", 4001),
            ({"apikey": None}, "apikey", 4001),
            ({"permissions": []}, "permissions", 4008),
            ({"permissions": ["allow_everything"]}, "permissions", 4008),
            ({"permissions": "allow_join"}, "permissions", 4008),
            ({"permissions": ["ask_join", "allow_join"]}, "ask_join", 4008),
            ({"version": None}, "version", 4002),
            ({"version": 1}, "version", 4002),
            ({"version": "2"}, "version", 4002),
            ({"roles": ["rtc"]}, "crawler", 4008),
            ({"roles": None}, "crawler", 4008),
            ({"exp": None}, "exp", 4002),
            ({"iat": None}, "iat", 4002),
        ],
        ids=str,
    )
    def test_a_token_breaking_a_claim_rule_is_refused(self, api, mint, overrides, detail, code):
        """Each documented claim rule is enforced, with a detail naming the broken rule."""
        token = mint(**overrides)
        body = refusal(api.post(START, {"roomId": "r1"}, headers={"Authorization": token}))
        assert detail in body["detail"]
        assert body["code"] == code

    def test_ask_join_alone_is_accepted(self, api, mint):
        """ask_join is valid when it is the only permission."""
        token = mint(permissions=["ask_join"])
        response = api.post(START, {"roomId": "r1"}, headers={"Authorization": token})
        assert response.status_code == 200

    def test_a_token_expires_by_the_sandbox_clock_without_leeway(self, api, clock):
        """The token works until its exp by the sandbox's clock, not a second longer."""
        clock.advance(599)
        assert api.post(START, {"roomId": "r1"}).status_code == 200
        clock.advance(1)
        body = refusal(api.post("/v2/recordings/end", {"roomId": "r1"}))
        assert "expired" in body["detail"]

    def test_a_token_not_valid_yet_is_refused(self, api, mint, clock):
        """An nbf in the future by the sandbox clock answers 401."""
        token = mint(nbf=int(clock.now) + 60)
        body = refusal(api.post(START, {"roomId": "r1"}, headers={"Authorization": token}))
        assert "nbf" in body["detail"]

    def test_every_videosdk_endpoint_needs_a_token(self, api):
        """The sessions listing is as protected as the recording calls."""
        response = api.get("/v2/sessions/", {"roomId": "r1"}, headers={"Authorization": None})
        refusal(response)


class TestDefaults:
    def test_the_default_credentials_are_accepted(self, http):
        """A sandbox built without arguments accepts tokens signed with the defaults."""
        claims = {
            "apikey": DEFAULT_API_KEY,
            "permissions": ["allow_join", "allow_mod"],
            "version": 2,
            "roles": ["crawler"],
            "iat": 1,
            "exp": 2**40,
        }
        # The default secret is long enough for pyjwt to sign with it without a warning.
        token = jwt.encode(claims, DEFAULT_SECRET, algorithm="HS256")
        with SandboxServer(Sandbox()) as server:
            response = http.post(
                f"{server.url}{START}",
                json={"roomId": "r1"},
                headers={"Authorization": token},
                timeout=5,
            )
        assert response.status_code == 200
