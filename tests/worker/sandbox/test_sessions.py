"""The sessions listing: which meetings a room had, and whether one is ongoing."""

from __future__ import annotations

SESSIONS = "/v2/sessions/"


def test_a_room_live_by_default_lists_one_ongoing_session(api, clock):
    """Any room has one ongoing session, begun when the sandbox first saw it."""
    response = api.get(SESSIONS, {"roomId": "r1"})
    assert response.status_code == 200
    page = response.json()
    assert page["pageInfo"] == {"currentPage": 1, "perPage": 20, "lastPage": 1, "total": 1}
    (session,) = page["data"]
    assert session["roomId"] == "r1"
    assert session["status"] == "ongoing"
    assert session["end"] is None
    assert session["start"] == "2027-01-15T08:00:00.000Z"
    assert len(session["id"]) == 24


def test_the_path_without_a_trailing_slash_lists_the_same(api):
    """GET /v2/sessions?roomId= works as well as the documented /v2/sessions/."""
    assert api.get("/v2/sessions", {"roomId": "r1"}).json()["pageInfo"]["total"] == 1


def test_an_ended_session_is_listed_as_ended_after_the_new_one(api, sandbox, clock):
    """Sessions are listed newest first, each with its status."""
    api.get(SESSIONS, {"roomId": "r1"})
    clock.advance(30)
    sandbox.end_session("r1")
    clock.advance(30)
    sandbox.make_live("r1")
    data = api.get(SESSIONS, {"roomId": "r1"}).json()["data"]
    assert [s["status"] for s in data] == ["ongoing", "ended"]
    assert data[1]["end"] == "2027-01-15T08:00:30.000Z"


def test_a_room_not_live_by_default_has_no_session(start_server, http, mint):
    """Without rooms live by default, a room has no session until made live."""
    server = start_server(rooms_live_by_default=False)
    response = http.get(
        server.url + SESSIONS, params={"roomId": "r1"}, headers={"Authorization": mint()}
    )
    assert response.json()["data"] == []
    assert response.json()["pageInfo"]["total"] == 0


def test_pages_split_the_sessions(api, sandbox):
    """page and perPage cut the listing, and pageInfo says where it stands."""
    for _ in range(3):
        sandbox.make_live("r1")
        sandbox.end_session("r1")
    page = api.get(SESSIONS, {"roomId": "r1", "page": "2", "perPage": "2"}).json()
    assert page["pageInfo"] == {"currentPage": 2, "perPage": 2, "lastPage": 2, "total": 3}
    assert len(page["data"]) == 1


def test_a_listing_without_a_room_is_refused(api):
    """roomId is required: a listing of every room would hide a client bug."""
    response = api.get(SESSIONS)
    assert response.status_code == 400
    assert "roomId" in response.json()["message"]


def test_an_unknown_query_parameter_is_refused_by_name(api):
    """A parameter VideoSDK does not document answers 400 naming it."""
    response = api.get(SESSIONS, {"roomId": "r1", "jobId": "j1"})
    assert response.status_code == 400
    assert "jobId" in response.json()["message"]
