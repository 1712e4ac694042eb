"""The kinds of job recq runs: for each, its schema, task, VideoSDK endpoint and events.

A job is a JSON object in VideoSDK's own field names plus a few envelope fields of ours
(``jobId``, ``metadata``, ``startAt``...). The envelope never reaches VideoSDK:
:meth:`JobKind.request_body` strips it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker.errors import Target
from worker.validation import ENVELOPE_FIELDS
from worker.videosdk import Endpoints


@dataclass(frozen=True, slots=True)
class JobKind:
    """One kind of job and everything that names it."""

    name: str
    """The schema's name and the job's ``kind`` in states and events."""
    command: str
    """The word ``recq enqueue`` takes."""
    task_name: str
    endpoint: str
    event_prefix: str
    """Events are ``<prefix>.started``, ``<prefix>.failed``..."""
    track: bool = False

    def request_body(self, job: Mapping[str, Any]) -> dict[str, Any]:
        """Exactly the VideoSDK fields of ``job``, in the order the producer gave them."""
        return {k: v for k, v in job.items() if k not in ENVELOPE_FIELDS}

    def target(self, job: Mapping[str, Any]) -> Target:
        """What the job is about; tolerant of invalid jobs, for their failure events."""
        room = job.get("roomId")
        room_id = room if isinstance(room, str) else ""
        if not self.track:
            return Target(room_id=room_id)
        participant, kind = job.get("participantId"), job.get("kind")
        return Target(
            room_id=room_id,
            participant_id=participant if isinstance(participant, str) else None,
            kind=kind if isinstance(kind, str) else None,
        )

    def event_type(self, outcome: str) -> str:
        return f"{self.event_prefix}.{outcome}"


START_RECORDING = JobKind(
    name="start-recording",
    command="start-recording",
    task_name="recq.start_recording",
    endpoint=Endpoints.START_RECORDING,
    event_prefix="recording",
)
START_TRACK_RECORDING = JobKind(
    name="start-track-recording",
    command="track-recording",
    task_name="recq.start_track_recording",
    endpoint=Endpoints.START_TRACK_RECORDING,
    event_prefix="track_recording",
    track=True,
)

KINDS: tuple[JobKind, ...] = (START_RECORDING, START_TRACK_RECORDING)
BY_COMMAND: Mapping[str, JobKind] = {k.command: k for k in KINDS}
BY_TASK: Mapping[str, JobKind] = {k.task_name: k for k in KINDS}
