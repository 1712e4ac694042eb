"""The sandbox: a faithful, strict stand-in for the VideoSDK REST API, without the network.

:class:`Sandbox` answers requests given as plain values (:meth:`Sandbox.handle`), so it can run
behind :class:`~worker.sandbox.server.SandboxServer` or be called directly. A VideoSDK call goes
through, in order: an injected fault (like a gateway, before anything else), the route (404),
authentication (401), the body (415, 400), then the room rules (400 with a catalogue code).
Every path outside ``/_sandbox/`` counts as a VideoSDK call, unknown ones included (logged,
faults apply), so a client calling a wrong path shows in the log. Paths under ``/_sandbox/`` are
the control API (:mod:`worker.sandbox.control`): never logged, never faulted, never slowed.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from worker.sandbox import control
from worker.sandbox.auth import TokenVerifier, split_prefix
from worker.sandbox.calls import Call, CallLog
from worker.sandbox.endpoints import ROUTES
from worker.sandbox.faults import Fault, FaultQueue
from worker.sandbox.messages import ApiError, Reply, Request
from worker.sandbox.rooms import Rooms

DEFAULT_API_KEY = "sandbox-key"
DEFAULT_SECRET = "sandbox-secret-not-for-production"  # noqa: S105 (a fixture, printed by `recq fake-api`)


class Sandbox:
    """VideoSDK's recording API in memory: rooms, sessions, recordings, faults and a call log.

    Thread-safe: the server answers each connection on its own thread. ``clock`` (epoch seconds)
    decides token expiry, session times and the calls' ``at``. With ``rooms_live_by_default``
    every room is in a meeting until :meth:`end_session`; without it, only after
    :meth:`make_live`. ``latency`` (seconds, settable) is added to every VideoSDK answer.
    """

    def __init__(
        self,
        api_key: str = DEFAULT_API_KEY,
        secret: str = DEFAULT_SECRET,
        *,
        latency: float = 0.0,
        rooms_live_by_default: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api_key = api_key
        self.latency = latency
        self._clock = clock
        self._verifier = TokenVerifier(api_key, secret)
        self._rooms = Rooms(clock, live_by_default=rooms_live_by_default)
        self._faults = FaultQueue()
        self._log = CallLog()
        self._request_ids = itertools.count(1)

    @property
    def latency(self) -> float:
        """Seconds added to every VideoSDK answer (benchmarks use 0.02)."""
        return self._latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("latency cannot be negative")
        self._latency = seconds

    def handle(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
    ) -> Reply:
        """Answer one HTTP request. Never raises for a bad request: that is an error reply."""
        lowered = {name.lower(): value for name, value in headers.items()}
        request = Request(method.upper(), path, dict(query), lowered, body)
        if path == "/_sandbox" or path.startswith("/_sandbox/"):
            return control.handle(self, request)
        arrived = self._clock()
        fault = self._faults.take(path, _room_of(request)) if self._faults.pending() else None
        reply, real = self._answer(request, fault)
        self._record(request, reply, fault.describe(real) if fault else None, arrived)
        return reply

    def _answer(self, request: Request, fault: Fault | None) -> tuple[Reply, int | None]:
        """The reply, shaped by ``fault``; and the real status when the fault applied the call."""
        if fault is None:
            self._pause(0.0)
            return self._serve(request), None
        real = self._serve(request) if fault.applies else None
        self._pause(fault.latency)
        if fault.replaces_answer:
            return fault.reply(), real.status if real else None
        return real or self._serve(request), None

    def _pause(self, extra: float) -> None:
        seconds = self._latency + extra
        if seconds > 0:
            time.sleep(seconds)

    def _serve(self, request: Request) -> Reply:
        endpoint = ROUTES.get((request.method, request.path))
        if endpoint is None:
            return ApiError(404, f"Cannot {request.method} {request.path}").reply()
        try:
            self._verifier.verify(request.headers.get("authorization"), self._clock())
            reply = endpoint(self._rooms, request)
        except ApiError as error:
            reply = error.reply()
        # Like the real service, so that clients can keep it on their errors.
        request_id = ("X-Request-Id", f"sandbox-{next(self._request_ids)}")
        return dataclasses.replace(reply, headers=(*reply.headers, request_id))

    def _record(self, request: Request, reply: Reply, fault: str | None, at: float) -> None:
        header = request.headers.get("authorization")
        prefix, token = split_prefix(header) if header else (None, "")
        call = Call(
            method=request.method,
            path=request.path,
            query=request.query,
            body=_parsed(request.body),
            content_type=request.headers.get("content-type"),
            claims=self._verifier.claims(token) if token else None,
            auth_prefix=prefix,
            status=reply.status,
            fault=fault,
            at=at,
        )
        self._log.append(call)

    def inject(self, *faults: Fault) -> None:
        """Queue faults for the next matching VideoSDK calls, after those already queued."""
        self._faults.add(*faults)

    @property
    def pending_faults(self) -> list[Fault]:
        """The faults not used up yet."""
        return self._faults.pending()

    @property
    def calls(self) -> list[Call]:
        """A copy of every VideoSDK call so far, oldest first."""
        return self._log.snapshot()

    def calls_to(self, path: str) -> list[Call]:
        """The calls to ``path``."""
        return self._log.snapshot(path)

    def accepted(self, path: str) -> list[Call]:
        """The calls to ``path`` that were answered with a 2xx."""
        return [call for call in self._log.snapshot(path) if call.ok]

    def wait_for_calls(self, n: int, timeout: float = 10.0, path: str | None = None) -> list[Call]:
        """Block until at least ``n`` calls (to ``path``) were logged; TimeoutError otherwise."""
        return self._log.wait_for(n, timeout, path)

    def reset(self) -> None:
        """Forget every call, fault, room, session and recording."""
        self._faults.clear()
        self._rooms.clear()
        self._log.clear()

    def make_live(self, room_id: str, at: float | None = None) -> None:
        """Begin a meeting in the room at ``at`` (epoch seconds by the sandbox clock; None: now)."""
        self._rooms.make_live(room_id, at)

    def end_session(self, room_id: str) -> None:
        """End the room's meeting, which stops its recordings; it stays over until made live."""
        self._rooms.end_session(room_id)

    def recording_running(self, room_id: str) -> bool:
        """Whether the room's recording is running."""
        return self._rooms.recording_running(room_id)

    def track_running(self, room_id: str, participant_id: str, kind: str) -> bool:
        """Whether the participant's track of this kind is being recorded."""
        return self._rooms.track_running(room_id, participant_id, kind)


def _parsed(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def _room_of(request: Request) -> str | None:
    """The roomId a call is about, from its query or JSON body; None when it names none."""
    room = request.query.get("roomId")
    if room is None and request.body:
        try:
            parsed = json.loads(request.body)
        except ValueError:
            return None
        room = parsed.get("roomId") if isinstance(parsed, dict) else None
    return room if isinstance(room, str) else None
