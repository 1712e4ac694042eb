"""The VideoSDK client against the sandbox over real HTTP: one attempt, every outcome classified."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import jwt
import pytest
import requests

from worker.errors import Answer, UpstreamRejected, UpstreamUnavailable
from worker.redis_server import free_port
from worker.sandbox import DEFAULT_API_KEY, DEFAULT_SECRET, Fault
from worker.settings import Credentials, Secret
from worker.tokens import TokenSigner
from worker.videosdk import (
    MAX_BODY_CHARS,
    Endpoints,
    VideoSDKClient,
    answer_of,
    build_session,
    last_page,
    ongoing_session,
    parse_retry_after,
    refused_as_already_running,
    refused_as_not_running,
)

START = Endpoints.START_RECORDING
CREDENTIALS = Credentials(api_key=DEFAULT_API_KEY, secret=Secret(DEFAULT_SECRET))
PRE_SIGNED = "https://bucket.s3.amazonaws.com/rec.mp4?X-Amz-Signature=abc"

ClientFactory = Callable[..., VideoSDKClient]


@pytest.fixture
def make_client(sandbox_server) -> Iterator[ClientFactory]:
    """Build clients on fresh sessions (pointed at the sandbox unless told); all closed after."""
    sessions = []

    def make(endpoint: str | None = None, read_timeout: float = 2.0) -> VideoSDKClient:
        endpoint = endpoint or sandbox_server.url
        session = build_session(endpoint)
        sessions.append(session)
        return VideoSDKClient(
            session,
            endpoint=endpoint,
            tokens=TokenSigner(CREDENTIALS),
            connect_timeout=2.0,
            read_timeout=read_timeout,
        )

    yield make
    for session in sessions:
        session.close()


@pytest.fixture
def client(make_client) -> VideoSDKClient:
    return make_client()


def rejected(status: int, body: str) -> UpstreamRejected:
    return UpstreamRejected("no", endpoint=START, answer=answer_of(status, body))


class TestVideoSDKClient:
    def test_a_success_returns_the_answer(self, client, sandbox):
        """A 2xx comes back as an Answer with its status, body and request id."""
        answer = client.post(START, {"roomId": "r1"})
        assert isinstance(answer, Answer)
        assert answer.status == 200
        assert "Recording started" in answer.body
        assert answer.request_id is not None
        assert sandbox.recording_running("r1")

    def test_the_raw_token_and_a_json_content_type_are_sent(self, client, sandbox):
        """Authorization holds the bare JWT with the worker's claims; the body is JSON."""
        client.post(START, {"roomId": "r1"})
        [call] = sandbox.calls
        assert call.auth_prefix is None
        assert call.claims is not None
        assert call.claims["apikey"] == DEFAULT_API_KEY
        assert call.claims["roles"] == ["crawler"]
        assert call.content_type == "application/json"

    def test_the_body_sent_is_the_body_given(self, client, sandbox):
        """Every field reaches VideoSDK unchanged, nested objects included."""
        body = {"roomId": "r1", "config": {"layout": {"type": "GRID", "gridSize": 4}}}
        client.post(START, body)
        assert sandbox.calls[0].body == body

    def test_a_429_is_unavailable_with_its_retry_after(self, client, sandbox):
        """Too Many Requests is transient and carries the seconds VideoSDK asked for."""
        sandbox.inject(Fault(status=429, retry_after="3"))
        with pytest.raises(UpstreamUnavailable) as caught:
            client.post(START, {"roomId": "r1"})
        assert caught.value.status == 429
        assert caught.value.retry_after == 3

    def test_a_503_is_unavailable(self, client, sandbox):
        """A 5xx is transient, with no Retry-After when none was sent."""
        sandbox.inject(Fault(status=503))
        with pytest.raises(UpstreamUnavailable) as caught:
            client.post(START, {"roomId": "r1"})
        assert caught.value.status == 503
        assert caught.value.retry_after is None

    def test_a_400_is_rejected_with_status_body_and_request_id(self, client, sandbox):
        """A refused body is permanent and keeps what VideoSDK said, to quote to support."""
        with pytest.raises(UpstreamRejected) as caught:
            client.post(START, {"templateUrl": "https://example.com/"})
        info = caught.value.info()
        assert info.reason == "upstream_rejected"
        assert info.status == 400
        assert "roomId" in (info.body or "")
        assert (info.request_id or "").startswith("sandbox-")

    def test_a_slow_answer_is_unavailable_and_may_have_applied(self, make_client, sandbox):
        """A read timeout means the request left: VideoSDK may have acted on it."""
        sandbox.inject(Fault(latency=0.5))
        client = make_client(read_timeout=0.1)
        with pytest.raises(UpstreamUnavailable) as caught:
            client.post(START, {"roomId": "r1"})
        assert caught.value.maybe_applied is True
        assert caught.value.answer is None
        assert len(sandbox.wait_for_calls(1, timeout=5)) == 1

    def test_a_dropped_answer_is_unavailable_and_may_have_applied(self, client, sandbox):
        """A connection closed without an answer may follow a start that happened."""
        sandbox.inject(Fault(drop_answer=True))
        with pytest.raises(UpstreamUnavailable) as caught:
            client.post(START, {"roomId": "r1"})
        assert caught.value.maybe_applied is True
        assert len(sandbox.calls) == 1

    def test_a_refused_connection_certainly_did_not_apply(self, make_client):
        """Nothing listens on the port: the request never reached VideoSDK."""
        client = make_client(endpoint=f"http://127.0.0.1:{free_port()}")
        with pytest.raises(UpstreamUnavailable) as caught:
            client.post(START, {"roomId": "r1"})
        assert caught.value.maybe_applied is False

    def test_the_session_makes_no_retries_of_its_own(self, client, sandbox):
        """One 503 and one post: VideoSDK sees exactly one call; retrying is the policy's job."""
        sandbox.inject(Fault(status=503))
        with pytest.raises(UpstreamUnavailable):
            client.post(START, {"roomId": "r1"})
        assert [call.status for call in sandbox.calls] == [503]

    def test_a_netrc_login_for_the_host_does_not_replace_the_token(
        self, make_client, sandbox, tmp_path, monkeypatch
    ):
        """requests would send ~/.netrc's login as Basic auth instead of the signed token."""
        netrc = tmp_path / "netrc"
        netrc.write_text("machine 127.0.0.1 login someone password hunter2\n")
        netrc.chmod(0o600)
        monkeypatch.setenv("NETRC", str(netrc))
        make_client().post(START, {"roomId": "r1"})
        [call] = sandbox.calls
        assert call.claims is not None
        assert call.claims["apikey"] == DEFAULT_API_KEY

    def test_the_environment_s_proxy_is_used_as_it_was_when_the_session_was_built(
        self, make_client, sandbox, monkeypatch
    ):
        """HTTP_PROXY and NO_PROXY are read once, by build_session, not on every call."""
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")  # nothing listens
        proxied = make_client()
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        direct = make_client()
        monkeypatch.delenv("HTTP_PROXY")
        with pytest.raises(UpstreamUnavailable):
            proxied.post(START, {"roomId": "via-proxy"})
        direct.post(START, {"roomId": "direct"})
        assert [call.body for call in sandbox.calls] == [{"roomId": "direct"}]

    def test_each_endpoint_s_request_is_prepared_once_not_on_every_call(self, sandbox_server):
        """The session's headers and settings are merged once per endpoint, then copied."""
        prepared: list[str] = []

        class CountingSession(requests.Session):
            def prepare_request(self, request: requests.Request) -> requests.PreparedRequest:
                prepared.append(request.url)
                return super().prepare_request(request)

        session = CountingSession()
        client = VideoSDKClient(
            session, endpoint=sandbox_server.url, tokens=TokenSigner(CREDENTIALS)
        )
        for room in ("r1", "r2", "r3"):
            client.post(START, {"roomId": room})
            client.get(Endpoints.SESSIONS, {"roomId": room})
        session.close()
        assert prepared == [sandbox_server.url + START, sandbox_server.url + Endpoints.SESSIONS]

    def test_each_call_sends_only_its_own_body_and_query(self, client, sandbox):
        """A copied request carries nothing over from the calls before it."""
        client.get(Endpoints.SESSIONS, {"roomId": "r1", "page": "2"})
        client.get(Endpoints.SESSIONS, {"roomId": "r2"})
        client.post(START, {"roomId": "r3"})
        client.post(START, {"roomId": "r4", "config": {"mode": "audio"}})
        sent = [(call.method, call.query, call.body) for call in sandbox.calls]
        assert sent == [
            ("GET", {"roomId": "r1", "page": "2"}, None),
            ("GET", {"roomId": "r2"}, None),
            ("POST", {}, {"roomId": "r3"}),
            ("POST", {}, {"roomId": "r4", "config": {"mode": "audio"}}),
        ]
        assert all(call.claims is not None for call in sandbox.calls)

    def test_error_bodies_are_redacted(self, client, sandbox):
        """An echoed JWT or pre-signed URL query is kept out of the error's body and message."""
        token = jwt.encode({"sub": "someone"}, DEFAULT_SECRET, algorithm="HS256")
        echo = json.dumps({"token": token, "url": PRE_SIGNED})
        sandbox.inject(Fault(status=400, body=echo))
        with pytest.raises(UpstreamRejected) as caught:
            client.post(START, {"roomId": "r1"})
        body = caught.value.info().body or ""
        assert "https://bucket.s3.amazonaws.com/rec.mp4" in body
        for secret in (token, "X-Amz-Signature"):
            assert secret not in body
            assert secret not in str(caught.value)


class TestParseRetryAfter:
    def test_delta_seconds_are_read_as_seconds(self):
        """``Retry-After: 120`` means two minutes."""
        assert parse_retry_after("120") == 120.0

    def test_an_http_date_is_read_as_the_seconds_until_it(self):
        """A date is turned into the wait from ``now``, never negative."""
        now = datetime(2015, 10, 21, 7, 27, 30, tzinfo=UTC)
        assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == 30.0
        assert parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now=now) == 0.0

    @pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5", "\u00b2", "\u0663"])
    def test_anything_else_is_none(self, value):
        """A missing or unreadable header asks for nothing."""
        assert parse_retry_after(value) is None


class TestRefusedAsAlreadyRunning:
    @pytest.mark.parametrize(
        "body",
        [
            '{"code": 4011}',
            '{"code": 4011, "message": ""}',
            '{"code": 4011, "message": "Recording is already starting"}',
            '{"code": 4011, "error": "already running"}',
            '{"code": 4011, "message": "Recording is in progress"}',
            '{"code": 4011, "message": "A recording is currently running for this meeting"}',
            '{"error": "recording already running", "message": "Bad Request"}',
        ],
    )
    def test_code_4011_saying_no_other_reason_is_already_running(self, body):
        """The catalogue's 4011 (start refused), with no message or one saying so."""
        assert refused_as_already_running(rejected(400, body))

    @pytest.mark.parametrize(
        "body",
        [
            '{"code": 4011, "message": "Recording could not be started: no active participants"}',
            '{"code": 4011, "msg": "Nope"}',
        ],
    )
    def test_code_4011_giving_another_reason_is_not(self, body):
        """4011 is any refused start ("for example" one already running): a message with
        another reason is that refusal. Taken for a running recording, a start after an
        unanswered attempt was reported started while nothing recorded."""
        assert not refused_as_already_running(rejected(400, body))

    @pytest.mark.parametrize(
        "body", ["Recording is already running", "track ALREADY started", "already  in progress"]
    )
    def test_the_wording_is_already_running(self, body):
        """An undocumented body saying so, in any case, is enough."""
        assert refused_as_already_running(rejected(400, body))

    def test_another_400_is_not(self):
        """A refusal for any other reason is not taken for a running recording."""
        assert not refused_as_already_running(
            rejected(400, '{"code": 4003, "message": "No session"}')
        )
        assert not refused_as_already_running(rejected(400, '{"code": 4012}'))

    def test_an_unavailable_error_is_not(self):
        """Only a rejection can say the recording runs, even if a 503's body mentions it."""
        answer = Answer(status=503, body="already running")
        error = UpstreamUnavailable("busy", endpoint=START, answer=answer)
        assert not refused_as_already_running(error)

    def test_a_real_second_start_is_already_running(self, client):
        """The sandbox's refusal of a second start of the same room is recognised."""
        client.post(START, {"roomId": "r1"})
        with pytest.raises(UpstreamRejected) as caught:
            client.post(START, {"roomId": "r1"})
        assert refused_as_already_running(caught.value)


class TestRefusedAsNotRunning:
    @pytest.mark.parametrize("code", [4012, 4003])
    def test_stop_refused_and_no_meeting_are_not_running(self, code):
        """4012 (stop refused: nothing running); 4003 (the catalogue's invalid meeting id, and
        the sandbox's answer for a room with no live session): nothing records in that room."""
        assert refused_as_not_running(rejected(400, json.dumps({"code": code, "message": "x"})))

    @pytest.mark.parametrize(
        "body",
        [
            "No recording is running for this room",
            "no track recording running",
            '{"message": "Recording is not active"}',
        ],
    )
    def test_the_wording_about_a_recording_without_a_code(self, body):
        """An undocumented body without a code that says no recording runs is enough."""
        assert refused_as_not_running(rejected(400, body))

    @pytest.mark.parametrize(
        "body",
        [
            '{"code": 4021, "message": "Add-on services are not active"}',
            '{"code": 4006, "message": "No recording is running: account deactivated"}',
            "Your subscription is not active",
            "Service not running",
            "Recording service is not active for your plan",
            "No recording add-on is active on this account",
        ],
    )
    def test_another_refusal_is_not(self, body):
        """A refusal with another code is refused for that reason, whatever its wording; a
        body without one must be about a recording. Else a stop would be recorded succeeded
        while the account, not the recording, was the matter."""
        assert not refused_as_not_running(rejected(400, body))

    def test_a_real_stop_with_nothing_running_is_not_running(self, client):
        """The sandbox's refusal of a stop with nothing recording is recognised."""
        with pytest.raises(UpstreamRejected) as caught:
            client.post(Endpoints.STOP_RECORDING, {"roomId": "r1"})
        assert refused_as_not_running(caught.value)


class TestSessionsListing:
    def test_a_long_listing_is_read_whole(self, client, sandbox):
        """A page longer than an error may show (its body is cut) is still parsed whole."""
        for _ in range(40):
            sandbox.make_live("r1")
            sandbox.end_session("r1")
        sandbox.make_live("r1")
        answer = client.get(Endpoints.SESSIONS, {"roomId": "r1"})
        assert len(answer.body) == MAX_BODY_CHARS
        assert ongoing_session(answer)
        assert last_page(answer) == 3

    def test_a_listing_without_a_live_session(self, client, sandbox):
        """Ended sessions only: not live, and one page."""
        sandbox.end_session("r1")
        answer = client.get(Endpoints.SESSIONS, {"roomId": "r1"})
        assert not ongoing_session(answer)
        assert last_page(answer) == 1

    @pytest.mark.parametrize("body", ["<html>busy</html>", '"text"', "[]", '{"data": 3}'])
    def test_an_unreadable_listing_shows_no_session_on_one_page(self, body):
        """Whatever else comes back is read as no live session, one page."""
        answer = answer_of(200, body)
        assert not ongoing_session(answer)
        assert last_page(answer) == 1

    def test_the_parsed_body_is_never_shown(self):
        """Only the redacted, cut body is shown; the parsed whole stays out of reprs."""
        answer = answer_of(400, json.dumps({"url": PRE_SIGNED}))
        assert "X-Amz-Signature=abc" not in answer.body
        assert "X-Amz-Signature=abc" not in repr(answer)


class TestAnswerBody:
    def test_an_error_body_echoing_a_signed_url_after_a_newline_keeps_no_signature(self):
        """The body an error keeps goes to states, events, `recq status` and dead letters; in
        JSON a newline before the URL is '\\n', which hid it from redaction."""
        url = "https://bucket.s3.amazonaws.com/rec.mp4?X-Amz-Signature=SIGSECRET0123456789"
        answer = answer_of(400, json.dumps({"message": f"bad preSignedUrl:\n{url}"}))
        assert "SIGSECRET0123456789" not in answer.body

    def test_a_body_cut_short_keeps_no_password_it_parted_from_its_at_sign(self):
        """A body is cut to MAX_BODY_CHARS: cut before redaction, 'redis://:SECRETPW' lost its
        '@host' and was no longer seen as a URL's password."""
        url = "redis://:SECRETPW@cache:6379/0"
        text = " " * (MAX_BODY_CHARS - len("redis://:SECRETPW")) + url
        assert "SECRETPW" not in answer_of(500, text).body
