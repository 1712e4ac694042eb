"""Injected faults: error statuses, slow answers and lost answers, applied or not."""

from __future__ import annotations

import time

import pytest
import requests

from worker.sandbox import Fault

START, END = "/v2/recordings/start", "/v2/recordings/end"
SESSIONS = "/v2/sessions/"


class TestStatusFaults:
    def test_a_429_carries_its_retry_after_and_does_not_start(self, api, sandbox):
        """A status fault answers in place of the API; the call has no effect."""
        sandbox.inject(Fault(status=429, retry_after="2"))
        response = api.post(START, {"roomId": "r1"})
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "2"
        assert response.json()["statusCode"] == 429
        assert not sandbox.recording_running("r1")

    def test_a_fault_is_used_up_after_its_times(self, api, sandbox):
        """times=2 answers two calls, the third reaches the API."""
        sandbox.inject(Fault(status=503, times=2))
        statuses = [api.post(START, {"roomId": "r1"}).status_code for _ in range(3)]
        assert statuses == [503, 503, 200]
        assert sandbox.pending_faults == []

    def test_faults_are_taken_in_order(self, api, sandbox):
        """The first queued fault answers first."""
        sandbox.inject(Fault(status=502), Fault(status=504))
        statuses = [api.post(START, {"roomId": "r1"}).status_code for _ in range(3)]
        assert statuses == [502, 504, 200]

    def test_a_fault_for_one_room_leaves_other_rooms_alone(self, api, sandbox):
        """A fault with a room waits for a call about that room, whatever comes first."""
        sandbox.inject(Fault(status=503, room="r2"))
        statuses = [api.post(START, {"roomId": room}).status_code for room in ("r1", "r2")]
        assert statuses == [200, 503]
        assert sandbox.pending_faults == []

    def test_a_fault_for_one_path_leaves_other_paths_alone(self, api, sandbox):
        """A fault with a path waits for a call to that exact path."""
        sandbox.inject(Fault(status=500, path=END))
        assert api.get(SESSIONS, {"roomId": "r1"}).status_code == 200
        assert api.post(START, {"roomId": "r1"}).status_code == 200
        assert api.post(END, {"roomId": "r1"}).status_code == 500
        assert sandbox.recording_running("r1")

    def test_faults_come_before_authentication(self, api, sandbox):
        """Like a gateway, a fault answers even a call without a token."""
        sandbox.inject(Fault(status=503))
        response = api.post(START, {"roomId": "r1"}, headers={"Authorization": None})
        assert response.status_code == 503

    def test_a_fault_body_is_sent_as_given(self, api, sandbox):
        """A custom body is sent verbatim, for clients that must not assume JSON."""
        sandbox.inject(Fault(status=502, body="<html>Bad Gateway</html>"))
        response = api.post(START, {"roomId": "r1"})
        assert response.status_code == 502
        assert response.text == "<html>Bad Gateway</html>"
        assert response.headers["Content-Type"].startswith("text/plain")

    def test_an_applied_fault_starts_the_recording_then_answers_an_error(self, api, sandbox):
        """applies=True: the start happens, the client sees a 503, a retry sees 4011."""
        sandbox.inject(Fault(status=503, applies=True))
        assert api.post(START, {"roomId": "r1"}).status_code == 503
        assert sandbox.recording_running("r1")
        assert api.post(START, {"roomId": "r1"}).json()["code"] == 4011
        assert sandbox.calls[0].fault == "status 503, after applying (real 200)"


class TestLostAnswers:
    def test_a_dropped_answer_is_a_connection_error_and_nothing_starts(self, api, sandbox):
        """drop_answer closes the connection without a word; the start did not happen."""
        sandbox.inject(Fault(drop_answer=True))
        with pytest.raises(requests.ConnectionError):
            api.post(START, {"roomId": "r1"})
        assert not sandbox.recording_running("r1")
        assert sandbox.calls[0].status == 0
        assert api.post(START, {"roomId": "r1"}).status_code == 200

    def test_a_start_that_happens_but_whose_answer_is_lost(self, api, sandbox):
        """drop_answer with applies: the client sees a connection error, yet the room records."""
        sandbox.inject(Fault(drop_answer=True, applies=True))
        with pytest.raises(requests.ConnectionError):
            api.post(START, {"roomId": "r1"})
        assert sandbox.recording_running("r1")
        assert sandbox.calls[0].fault == "answer dropped, after applying (real 200)"
        assert sandbox.accepted(START) == []


class TestLatency:
    def test_a_slow_answer_times_a_short_read_timeout_out_but_still_applies(self, api, sandbox):
        """A latency fault makes the client time out; the call still takes effect afterwards."""
        sandbox.inject(Fault(latency=0.5))
        with pytest.raises(requests.ReadTimeout):
            api.post(START, {"roomId": "r1"}, timeout=0.1)
        (call,) = sandbox.wait_for_calls(1, timeout=5)
        assert call.status == 200
        assert call.fault == "latency 0.5s"
        assert sandbox.recording_running("r1")

    def test_the_global_latency_slows_every_answer(self, start_server, http, mint):
        """Sandbox(latency=...) is added to every VideoSDK answer, and can be changed."""
        server = start_server(latency=0.2)
        url, headers = server.url + START, {"Authorization": mint()}
        began = time.monotonic()
        http.post(url, json={"roomId": "r1"}, headers=headers, timeout=5)
        assert time.monotonic() - began >= 0.2
        server.sandbox.latency = 0.0
        began = time.monotonic()
        http.post(url, json={"roomId": "r2"}, headers=headers, timeout=5)
        assert time.monotonic() - began < 0.2


class TestFaultValues:
    @pytest.mark.parametrize(
        "kwargs",
        [
            {"status": 99},
            {"status": 503, "drop_answer": True},
            {"retry_after": "1"},
            {"body": "x"},
            {"times": 0},
            {"latency": -1.0},
        ],
        ids=str,
    )
    def test_a_fault_that_makes_no_sense_is_refused(self, kwargs):
        """Contradictory or out-of-range faults raise ValueError when built."""
        with pytest.raises(ValueError):  # noqa: PT011 (the message varies by rule)
            Fault(**kwargs)
