"""The control API under ``/_sandbox/``: drive a sandbox that runs in another process.

No authentication, nothing logged, no faults, no latency::

    GET    /_sandbox/health                 {"status": "ok"}
    GET    /_sandbox/calls[?path=...]       the call log, a JSON list of calls
    POST   /_sandbox/faults                 a JSON list of faults (field names of Fault)
    POST   /_sandbox/reset                  forget calls, faults, rooms and recordings
    POST   /_sandbox/rooms/<roomId>/live    begin a meeting; optional body {"at": epoch}
    DELETE /_sandbox/rooms/<roomId>/live    end the meeting
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from worker.sandbox.faults import Fault
from worker.sandbox.messages import ApiError, Reply, Request, bad_request

if TYPE_CHECKING:
    from worker.sandbox.service import Sandbox

_ROOM_LIVE = re.compile(r"/_sandbox/rooms/([^/]+)/live")


def handle(sandbox: Sandbox, request: Request) -> Reply:
    """Answer one control request."""
    try:
        return _route(sandbox, request)
    except ApiError as error:
        return error.reply()


def _route(sandbox: Sandbox, request: Request) -> Reply:
    method, path = request.method, request.path
    if (method, path) == ("GET", "/_sandbox/health"):
        return Reply.json(200, {"status": "ok"})
    if (method, path) == ("GET", "/_sandbox/calls"):
        only = request.query.get("path")
        calls = sandbox.calls_to(only) if only else sandbox.calls
        return Reply.json(200, [call.to_json() for call in calls])
    if (method, path) == ("POST", "/_sandbox/faults"):
        faults = _faults(_json(request, default=None))
        sandbox.inject(*faults)
        return Reply.json(200, {"queued": len(faults)})
    if (method, path) == ("POST", "/_sandbox/reset"):
        sandbox.reset()
        return Reply.json(200, {"status": "reset"})
    room = _ROOM_LIVE.fullmatch(path)
    if room and method in ("POST", "DELETE"):
        return _live(sandbox, unquote(room.group(1)), request)
    raise ApiError(404, f"Cannot {method} {path}")


def _live(sandbox: Sandbox, room_id: str, request: Request) -> Reply:
    if request.method == "DELETE":
        sandbox.end_session(room_id)
        return Reply.json(200, {"roomId": room_id, "live": False})
    body = _json(request, default={})
    at = body.get("at") if isinstance(body, dict) else None
    if not isinstance(body, dict) or set(body) - {"at"} or isinstance(at, bool):
        raise bad_request('the body must be {"at": <epoch seconds>} or empty')
    if at is not None and not isinstance(at, int | float):
        raise bad_request('"at" must be a number of epoch seconds')
    sandbox.make_live(room_id, at)
    return Reply.json(200, {"roomId": room_id, "live": True})


def _json(request: Request, *, default: Any) -> Any:
    if not request.body.strip():
        return default
    try:
        return json.loads(request.body)
    except ValueError:
        raise bad_request("the body is not valid JSON") from None


def _faults(value: Any) -> list[Fault]:
    if not isinstance(value, list):
        raise bad_request("the body must be a JSON list of faults")
    try:
        return [Fault.from_json(item) for item in value]
    except (TypeError, ValueError) as error:
        raise bad_request(str(error)) from None
