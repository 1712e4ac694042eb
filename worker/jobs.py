"""The kinds of job recq runs: for each, its schema, task, VideoSDK endpoint and events.

A job is a JSON object in VideoSDK's own field names plus a few envelope fields of ours
(``jobId``, ``metadata``, ``startAt``...). The envelope never reaches VideoSDK:
:meth:`JobKind.request_body` strips it.

Starts and stops: a start job with ``stopAt`` is followed, once it succeeded, by a stop job of
the matching stop kind (:func:`stop_job_for`), whose id is the start's followed by ``:stop``.
A bulk job fans out into track jobs (:func:`child_jobs`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker.errors import Target, UpstreamError
from worker.timing import DEFAULT_GRACE, Timing
from worker.validation import ENVELOPE_FIELDS
from worker.videosdk import Endpoints, refused_as_already_running, refused_as_not_running

STOP_SUFFIX = ":stop"
TRACK_KINDS = ("audio", "video", "screen_audio", "screen_video")
"""The tracks a track recording names in ``kind``: the job schemas' enum."""


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
    stops: bool = False
    """A stop job (it ends a recording) rather than a start job."""
    fans_out: bool = False
    """A bulk job: it makes no call itself but publishes child jobs (see :func:`child_jobs`)."""

    @property
    def succeeded_outcome(self) -> str:
        """The event outcome of success: ``started`` or ``stopped``."""
        return "stopped" if self.stops else "started"

    def timing(self, job: Mapping[str, Any], *, grace: float = DEFAULT_GRACE) -> Timing:
        """When a valid job of this kind is due, and until when it may start."""
        return Timing.of_stop(job) if self.stops else Timing.of_start(job, grace=grace)

    def reconciles(self, error: UpstreamError, *, maybe_applied: bool) -> bool:
        """Whether a refusal means the job's aim already holds, so it counts as success.

        A start refused as already running succeeded if an earlier attempt of it may have
        reached VideoSDK. A stop refused because nothing is recording has what it asked for.
        """
        if self.stops:
            return refused_as_not_running(error)
        return maybe_applied and refused_as_already_running(error)

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


@dataclass(frozen=True, slots=True)
class Job:
    """A job with its id and kind, and the parts every record and event repeats."""

    id: str
    kind: JobKind
    body: Mapping[str, Any]
    batch_id: str | None = None
    """The batch this job is a child of."""

    @property
    def metadata(self) -> dict[str, Any]:
        metadata = self.body.get("metadata")
        return dict(metadata) if isinstance(metadata, Mapping) else {}

    @property
    def target(self) -> Target:
        return self.kind.target(self.body)


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

STOP_RECORDING = JobKind(
    name="stop-recording",
    command="stop-recording",
    task_name="recq.stop_recording",
    endpoint=Endpoints.STOP_RECORDING,
    event_prefix="recording",
    stops=True,
)
STOP_TRACK_RECORDING = JobKind(
    name="stop-track-recording",
    command="stop-track-recording",
    task_name="recq.stop_track_recording",
    endpoint=Endpoints.STOP_TRACK_RECORDING,
    event_prefix="track_recording",
    track=True,
    stops=True,
)

BULK_TRACK_RECORDING = JobKind(
    name="bulk-track-recording",
    command="bulk-track-recording",
    task_name="recq.bulk_track_recording",
    endpoint="",
    event_prefix="batch",
    fans_out=True,
)

KINDS: tuple[JobKind, ...] = (
    START_RECORDING,
    START_TRACK_RECORDING,
    STOP_RECORDING,
    STOP_TRACK_RECORDING,
    BULK_TRACK_RECORDING,
)
BY_NAME: Mapping[str, JobKind] = {k.name: k for k in KINDS}
BY_COMMAND: Mapping[str, JobKind] = {k.command: k for k in KINDS}
BY_TASK: Mapping[str, JobKind] = {k.task_name: k for k in KINDS}
_STOP_OF = {START_RECORDING: STOP_RECORDING, START_TRACK_RECORDING: STOP_TRACK_RECORDING}


def stop_job_for(job: Job, *, at: str | None = None) -> Job:
    """The stop job that ends what the start ``job`` started, at its ``stopAt`` (or ``at``).

    Its body names the same target, metadata and ``stopAt`` and no ``jobId``: its id,
    ``<start id>:stop``, travels as the task id.
    """
    kind = _STOP_OF[job.kind]
    body: dict[str, Any] = {
        "roomId": job.body["roomId"],
        "stopAt": at or job.body["stopAt"],
        "metadata": job.metadata,
    }
    if kind.track:
        body["participantId"] = job.body["participantId"]
        body["kind"] = job.body["kind"]
    return Job(job.id + STOP_SUFFIX, kind, body)


# What a bulk job hands down to each child, besides its target and metadata. Not its times to
# start: the batch waited for them and for its meeting, and a child delivered later (a batch of
# 1,000 under a rate limit takes minutes) must not fail a deadline the batch already met.
_INHERITED = ("fileFormat", "webhookUrl", "bucketDirPath", "stopAt")


def child_jobs(batch: Job) -> list[Job]:
    """The track jobs a bulk job fans out into: one per participant and kind, in that order.

    A child's id is ``<batch id>:<kind>:<participantId>`` (:func:`child_id`), the same whenever
    it is derived, so a redelivered batch names the same children. Children carry the batch's
    ``stopAt`` but neither ``startAt`` nor ``startDeadline``: the batch waited for its time and
    meeting already.
    """
    body = batch.body
    shared = {field: body[field] for field in _INHERITED if field in body}
    children = []
    for participant in body["participants"]:
        for kind in body["kinds"]:
            child = {
                "roomId": body["roomId"],
                "participantId": participant,
                "kind": kind,
                **shared,
                "metadata": batch.metadata,
            }
            children.append(
                Job(child_id(batch.id, kind, participant), START_TRACK_RECORDING, child, batch.id)
            )
    return children


def is_child_stop(subject: str, batch_id: str) -> bool:
    """Whether job id ``subject`` is the stop job of a child of batch ``batch_id``:
    ``<batch id>:<kind>:<participantId>:stop``, the participant id escaped (:func:`child_id`)."""
    kinds = "|".join(TRACK_KINDS)
    pattern = rf"{re.escape(batch_id)}:(?:{kinds}):[^:]+{re.escape(STOP_SUFFIX)}"
    return re.fullmatch(pattern, subject) is not None


def child_id(batch_id: str, kind: str, participant_id: str) -> str:
    """``<batch id>:<kind>:<participantId>``, with ``%`` and ``:`` in the participant id
    written ``%25`` and ``%3A``: no child then takes another's id or its stop job's
    (participants ``p`` and ``p:stop`` would otherwise share ``<batch>:audio:p:stop``)."""
    escaped = participant_id.replace("%", "%25").replace(":", "%3A")
    return f"{batch_id}:{kind}:{escaped}"
