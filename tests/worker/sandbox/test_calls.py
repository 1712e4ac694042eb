"""The call log: what clients sent, what they were answered, and waiting for calls."""

from __future__ import annotations

import threading

import pytest

from worker.sandbox import Fault

START, END = "/v2/recordings/start", "/v2/recordings/end"


def test_a_call_records_its_request_and_answer(api, sandbox, clock):
    """Method, path, query, parsed body, content type, claims, status and time are kept."""
    api.post(START, {"roomId": "r1"})
    api.get("/v2/sessions/", {"roomId": "r1"})
    start, listing = sandbox.calls
    assert (start.method, start.path, start.body, start.status) == (
        "POST",
        START,
        {"roomId": "r1"},
        200,
    )
    assert start.content_type == "application/json"
    assert start.claims["roles"] == ["crawler"]
    assert start.auth_prefix is None
    assert start.fault is None
    assert start.at == clock.now
    assert listing.query == {"roomId": "r1"}
    assert listing.body is None


def test_the_raw_token_is_never_kept(api, sandbox):
    """Only the claims are logged: the token itself appears nowhere in the log."""
    api.post(START, {"roomId": "r1"})
    assert api.token not in repr(sandbox.calls)


def test_an_undecodable_token_logs_no_claims(api, sandbox):
    """A header that is not a JWT leaves claims None."""
    api.post(START, {"roomId": "r1"}, headers={"Authorization": "garbage"})
    assert sandbox.calls[0].claims is None
    assert sandbox.calls[0].status == 401


def test_calls_to_and_accepted_filter_by_path_and_success(api, sandbox):
    """calls_to lists every call to a path; accepted only the 2xx ones."""
    api.post(START, {"roomId": "r1"})
    api.post(START, {"roomId": "r1"})
    api.post(END, {"roomId": "r1"})
    assert [c.status for c in sandbox.calls_to(START)] == [200, 400]
    assert len(sandbox.accepted(START)) == 1
    assert len(sandbox.accepted(END)) == 1


def test_the_calls_are_a_copy(api, sandbox):
    """Changing the returned list does not change the log."""
    api.post(START, {"roomId": "r1"})
    sandbox.calls.clear()
    assert len(sandbox.calls) == 1


def test_wait_for_calls_returns_once_enough_calls_arrived(api, sandbox):
    """wait_for_calls blocks until another thread's calls are logged."""
    worker = threading.Thread(
        target=lambda: [api.post(START, {"roomId": f"r{i}"}) for i in range(3)]
    )
    worker.start()
    calls = sandbox.wait_for_calls(3, timeout=5, path=START)
    worker.join()
    assert len(calls) == 3


def test_wait_for_calls_times_out_with_what_it_saw(api, sandbox):
    """Too few calls raise TimeoutError saying how many arrived."""
    api.post(START, {"roomId": "r1"})
    with pytest.raises(TimeoutError, match="1 of 2 calls to /v2/recordings/start"):
        sandbox.wait_for_calls(2, timeout=0.05, path=START)


def test_reset_forgets_calls_rooms_and_faults(api, sandbox):
    """After reset the sandbox is as new: no calls, no recordings, no faults."""
    api.post(START, {"roomId": "r1"})
    sandbox.inject(Fault(status=500))
    sandbox.reset()
    assert sandbox.calls == []
    assert not sandbox.recording_running("r1")
    assert sandbox.pending_faults == []
    assert api.post(START, {"roomId": "r1"}).status_code == 200
