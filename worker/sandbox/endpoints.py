"""The VideoSDK endpoints the sandbox serves, once the caller is authenticated.

Each endpoint checks its body (``Content-Type: application/json``, else 415; a JSON object
matching the documented fields, else 400), then applies the room rules of :mod:`rooms`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from worker.sandbox import schema
from worker.sandbox.messages import ApiError, Reply, Request, bad_request
from worker.sandbox.rooms import Rooms

Endpoint = Callable[[Rooms, Request], Reply]

START, END = "/v2/recordings/start", "/v2/recordings/end"
TRACK_START = "/v2/recordings/participant/track/start"
TRACK_STOP = "/v2/recordings/participant/track/stop"
SESSIONS = "/v2/sessions/"
PER_PAGE = 20


def json_body(request: Request, check: schema.Check) -> dict[str, Any]:
    """The request's JSON object body, once it passed ``check``; raises 415 or 400."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise ApiError(415, "Content-Type must be application/json")
    try:
        body = json.loads(request.body)
    except ValueError:
        raise bad_request("the body is not valid JSON") from None
    problem = check(body, "")
    if problem:
        raise bad_request(problem)
    return body  # type: ignore[no-any-return]  # check() proved it is an object


def start_recording(rooms: Rooms, request: Request) -> Reply:
    """``POST /v2/recordings/start``."""
    body = json_body(request, schema.START_RECORDING)
    rooms.start_recording(body["roomId"])
    return Reply.json(200, "Recording started successfully")


def end_recording(rooms: Rooms, request: Request) -> Reply:
    """``POST /v2/recordings/end``."""
    body = json_body(request, schema.END_RECORDING)
    rooms.stop_recording(body["roomId"])
    return Reply.json(200, "Recording ended successfully")


def start_track(rooms: Rooms, request: Request) -> Reply:
    """``POST /v2/recordings/participant/track/start``."""
    body = json_body(request, schema.START_TRACK)
    rooms.start_track(body["roomId"], body["participantId"], body["kind"])
    return Reply.json(200, "track recording started successfully.")


def stop_track(rooms: Rooms, request: Request) -> Reply:
    """``POST /v2/recordings/participant/track/stop``."""
    body = json_body(request, schema.STOP_TRACK)
    rooms.stop_track(body["roomId"], body["participantId"], body["kind"])
    return Reply.json(200, "track recording ended successfully.")


def list_sessions(rooms: Rooms, request: Request) -> Reply:
    """``GET /v2/sessions/?roomId=`` (``page`` and ``perPage`` optional)."""
    query = request.query
    unknown = sorted(set(query) - {"roomId", "page", "perPage"})
    if unknown:
        raise bad_request(f'"{unknown[0]}" is not allowed')
    room_id = query.get("roomId", "")
    if not room_id:
        raise bad_request('"roomId" is required')
    page, per_page = _positive(query, "page", 1), _positive(query, "perPage", PER_PAGE)
    sessions = rooms.sessions(room_id)
    last_page = max(1, -(-len(sessions) // per_page))
    info = {"currentPage": page, "perPage": per_page, "lastPage": last_page, "total": len(sessions)}
    data = sessions[(page - 1) * per_page : page * per_page]
    return Reply.json(200, {"pageInfo": info, "data": data})


def _positive(query: dict[str, str], name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise bad_request(f'"{name}" must be a positive integer')
    return int(raw)


ROUTES: dict[tuple[str, str], Endpoint] = {
    ("POST", START): start_recording,
    ("POST", END): end_recording,
    ("POST", TRACK_START): start_track,
    ("POST", TRACK_STOP): stop_track,
    ("GET", SESSIONS): list_sessions,
    ("GET", SESSIONS.rstrip("/")): list_sessions,
}
