"""What VideoSDK knows about rooms: their sessions and the recordings running in them.

Rules, from ``videosdk-api.md``: starting or stopping needs an ongoing session; a second start
of the same room recording (or the same participant's track of the same kind) is refused with
code 4011; a stop with nothing running is refused with code 4012. The service's code for "no
ongoing session" is not documented: the sandbox answers 400 with code 4003, so that it cannot be
mistaken for the "already running" (4011) a worker reconciles as success.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from worker.sandbox.messages import ApiError, bad_request

CODE_NO_SESSION, CODE_ALREADY_RUNNING, CODE_NOT_RUNNING = 4003, 4011, 4012

Track = tuple[str, str]  # (participantId, kind)


@dataclass(slots=True)
class Session:
    """One meeting in a room, from ``start`` until ``end`` (None while ongoing)."""

    id: str
    room_id: str
    start: float
    end: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The session as the sessions listing shows it."""
        return {
            "id": self.id,
            "roomId": self.room_id,
            "start": iso(self.start),
            "end": None if self.end is None else iso(self.end),
            "status": "ongoing" if self.end is None else "ended",
        }


@dataclass(slots=True)
class Room:
    """A room's sessions (oldest first) and what is being recorded in it."""

    id: str
    sessions: list[Session] = field(default_factory=list)
    recording: bool = False
    tracks: set[Track] = field(default_factory=set)

    def live(self, now: float) -> Session | None:
        """The ongoing session, if one has begun by ``now``."""
        last = self.sessions[-1] if self.sessions else None
        return last if last and last.end is None and last.start <= now else None


def iso(epoch: float) -> str:
    """An ISO-8601 UTC time with milliseconds, as JavaScript prints it."""
    stamp = datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


class Rooms:
    """All rooms of the sandbox; every method is safe across threads."""

    def __init__(self, clock: Callable[[], float], *, live_by_default: bool) -> None:
        self._clock = clock
        self._live_by_default = live_by_default
        self._lock = threading.Lock()
        self._rooms: dict[str, Room] = {}

    def start_recording(self, room_id: str) -> None:
        """Start the room's recording, or raise the API's refusal."""
        with self._lock:
            room = self._live_room(room_id)
            if room.recording:
                raise _already("Recording is already running for this room")
            room.recording = True

    def stop_recording(self, room_id: str) -> None:
        """Stop the room's recording, or raise the API's refusal."""
        with self._lock:
            room = self._live_room(room_id)
            if not room.recording:
                raise bad_request("No recording is running for this room", code=CODE_NOT_RUNNING)
            room.recording = False

    def start_track(self, room_id: str, participant_id: str, kind: str) -> None:
        """Start recording one participant's track, or raise the API's refusal."""
        with self._lock:
            room = self._live_room(room_id)
            if (participant_id, kind) in room.tracks:
                raise _already("Track recording is already running for this participant and kind")
            room.tracks.add((participant_id, kind))

    def stop_track(self, room_id: str, participant_id: str, kind: str) -> None:
        """Stop recording one participant's track, or raise the API's refusal."""
        with self._lock:
            room = self._live_room(room_id)
            if (participant_id, kind) not in room.tracks:
                message = "No track recording is running for this participant and kind"
                raise bad_request(message, code=CODE_NOT_RUNNING)
            room.tracks.discard((participant_id, kind))

    def sessions(self, room_id: str) -> list[dict[str, Any]]:
        """The room's sessions that have begun, newest first, as JSON objects."""
        with self._lock:
            room = self._room(room_id)  # first: it may begin the room's session now
            now = self._clock()
            return [s.to_json() for s in reversed(room.sessions) if s.start <= now]

    def make_live(self, room_id: str, at: float | None) -> None:
        """Begin a session at ``at`` (None: now), or move a session that has not begun yet."""
        with self._lock:
            now = self._clock()
            start = now if at is None else at
            room = self._rooms.setdefault(room_id, Room(room_id))
            last = room.sessions[-1] if room.sessions else None
            if last is not None and last.end is None:
                if last.start > now:  # scheduled, not begun: reschedule it
                    last.start = start
                return
            room.sessions.append(Session(_new_id(), room_id, start))

    def end_session(self, room_id: str) -> None:
        """End the room's session, which stops everything recording in it."""
        with self._lock:
            now = self._clock()
            room = self._rooms.setdefault(room_id, Room(room_id))
            last = room.sessions[-1] if room.sessions else None
            if last is not None and last.end is None:
                if last.start > now:
                    room.sessions.pop()  # it never began: there is nothing to end
                else:
                    last.end = now
            room.recording = False
            room.tracks.clear()

    def recording_running(self, room_id: str) -> bool:
        """Whether the room's recording runs."""
        with self._lock:
            room = self._rooms.get(room_id)
            return room is not None and room.recording

    def track_running(self, room_id: str, participant_id: str, kind: str) -> bool:
        """Whether a participant's track of this kind is being recorded."""
        with self._lock:
            room = self._rooms.get(room_id)
            return room is not None and (participant_id, kind) in room.tracks

    def clear(self) -> None:
        """Forget every room."""
        with self._lock:
            self._rooms.clear()

    def _room(self, room_id: str) -> Room:
        # A room seen for the first time is in a meeting when rooms are live by default.
        room = self._rooms.get(room_id)
        if room is None:
            room = self._rooms[room_id] = Room(room_id)
            if self._live_by_default:
                room.sessions.append(Session(_new_id(), room_id, self._clock()))
        return room

    def _live_room(self, room_id: str) -> Room:
        room = self._room(room_id)
        if room.live(self._clock()) is None:
            message = f"No ongoing session in room {room_id}: a recording needs a live meeting"
            raise bad_request(message, code=CODE_NO_SESSION)
        return room


def _already(message: str) -> ApiError:
    return bad_request(message, code=CODE_ALREADY_RUNNING)


def _new_id() -> str:
    # Shaped like VideoSDK's ids (24 hex digits); random so two sandboxes never collide.
    return secrets.token_hex(12)
