"""The /_sandbox/ control API: driving a sandbox that runs in another process."""

from __future__ import annotations

import pytest

START = "/v2/recordings/start"


@pytest.fixture
def control(server, http):
    """Call the control API (no token) and return the response."""

    def call(method, path, body=None):
        return http.request(method, f"{server.url}/_sandbox/{path}", json=body, timeout=5)

    return call


def test_health_answers_ok(control):
    """GET /_sandbox/health says the sandbox is up."""
    assert control("GET", "health").json() == {"status": "ok"}


def test_the_calls_are_listed_as_json_and_control_calls_are_not(api, control):
    """GET /_sandbox/calls lists the VideoSDK calls with the Call field names, and only them."""
    api.post(START, {"roomId": "r1"})
    control("GET", "health")
    (call,) = control("GET", "calls").json()
    assert call["path"] == START
    assert call["body"] == {"roomId": "r1"}
    assert call["status"] == 200
    assert call["claims"]["apikey"] == "test-key"
    assert set(call) == {
        "method", "path", "query", "body", "content_type",
        "claims", "auth_prefix", "status", "fault", "at",
    }  # fmt: skip


def test_faults_can_be_injected_over_http(api, control):
    """POST /_sandbox/faults queues faults given with the Fault field names."""
    faults = [{"status": 429, "retry_after": "1", "path": START}, {"status": 500}]
    assert control("POST", "faults", faults).json() == {"queued": 2}
    response = api.post(START, {"roomId": "r1"})
    assert (response.status_code, response.headers["Retry-After"]) == (429, "1")
    assert api.post(START, {"roomId": "r1"}).status_code == 500


@pytest.mark.parametrize(
    "body",
    [{"status": 500}, [{"colour": "red"}], [{"status": "500"}], [{"applies": 1}], [{"times": 0}]],
    ids=str,
)
def test_a_bad_fault_list_is_refused(control, sandbox, body):
    """A body that is not a list of valid faults answers 400 and queues nothing."""
    assert control("POST", "faults", body).status_code == 400
    assert sandbox.pending_faults == []


def test_reset_over_http_forgets_everything(api, control, sandbox):
    """POST /_sandbox/reset clears calls and recordings."""
    api.post(START, {"roomId": "r1"})
    assert control("POST", "reset").status_code == 200
    assert sandbox.calls == []
    assert not sandbox.recording_running("r1")


def test_rooms_are_made_live_and_ended_over_http(start_server, http, mint, clock):
    """POST and DELETE /_sandbox/rooms/<roomId>/live begin and end a meeting."""
    server = start_server(rooms_live_by_default=False)
    live = f"{server.url}/_sandbox/rooms/room%201/live"
    headers = {"Authorization": mint()}
    assert http.post(live, json={"at": clock.now}, timeout=5).status_code == 200
    started = http.post(server.url + START, json={"roomId": "room 1"}, headers=headers)
    assert started.status_code == 200
    assert http.delete(live, timeout=5).json() == {"roomId": "room 1", "live": False}
    assert not server.sandbox.recording_running("room 1")


@pytest.mark.parametrize("body", [{"at": "soon"}, {"at": True}, {"when": 1}, [1]], ids=str)
def test_a_bad_live_body_is_refused(control, body):
    """The live body is empty or {"at": <epoch seconds>}."""
    assert control("POST", "rooms/r1/live", body).status_code == 400


def test_an_unknown_control_path_answers_404(control):
    """Anything else under /_sandbox/ is a 404."""
    assert control("GET", "faults").status_code == 404
