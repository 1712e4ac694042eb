"""Fanning out a bulk-track-recording batch of 1,000 tracks (1,000 participants x one kind).

What is measured, all from records the worker writes itself (one machine, one clock):

- **fan-out**: from the batch's first ``running`` record (written by the batch task as it begins
  the fan-out, before the first child) to the last child's ``queued`` record (each child is
  recorded ``queued`` immediately before its message is published);
- **enqueue to published**: the same end, from the moment the producer was called;
- **batch completed**: from the moment the producer was called to the batch's ``completedAt``
  (written when the last child's end is counted).

The children run meanwhile on the same worker, as they would in production.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from bench.recq_run import WorkerProcess, until
from bench.stand import Stand
from worker.batches import Batches
from worker.jobs import BULK_TRACK_RECORDING, Job, child_jobs
from worker.producer import Producer
from worker.state import JobStore, State
from worker.validation import validate


@dataclass(frozen=True, slots=True)
class FanOut:
    """Seconds each span took (None: the record was not found); ``failed`` children."""

    tracks: int
    fan_out: float | None
    enqueue_to_published: float | None
    completed: float | None
    failed: int


def measure(
    stand: Stand,
    producer: Producer,
    store: JobStore,
    batches: Batches,
    worker: WorkerProcess,
    *,
    participants: int,
) -> FanOut:
    """Enqueue one batch of ``participants`` audio tracks and time its fan-out and completion."""
    batch_id = f"bench-fanout-{participants}"
    job = {
        "jobId": batch_id,
        "roomId": "bench-fanout-room",
        "participants": [f"participant-{n}" for n in range(participants)],
        "kinds": ["audio"],
    }
    enqueued = time.time()
    producer.enqueue(BULK_TRACK_RECORDING, job)
    _await_completion(batches, worker, batch_id, timeout=60 + participants / 20)
    body = validate(BULK_TRACK_RECORDING.name, job)
    children = child_jobs(Job(batch_id, BULK_TRACK_RECORDING, body))
    published = _latest_first(store, [child.id for child in children], State.QUEUED)
    started = _latest_first(store, [batch_id], State.RUNNING)
    progress = batches.progress(batch_id)
    completed_at = stand.redis.hget(f"{stand.settings.namespace}:batch:{batch_id}", "completedAt")
    return FanOut(
        tracks=len(children),
        fan_out=None if published is None or started is None else published - started,
        enqueue_to_published=None if published is None else published - enqueued,
        completed=None if completed_at is None else float(completed_at) - enqueued,
        failed=progress.failed if progress else 0,
    )


def _await_completion(
    batches: Batches, worker: WorkerProcess, batch_id: str, timeout: float
) -> None:
    def completed() -> bool:
        progress = batches.progress(batch_id)
        return progress is not None and progress.completed

    until(
        completed,
        [worker],
        timeout=timeout,
        failure=lambda: (
            f"batch {batch_id} did not complete in {timeout:g} s: {batches.progress(batch_id)}"
        ),
        every=0.05,
    )


def _latest_first(store: JobStore, job_ids: list[str], state: State) -> float | None:
    """The latest, over ``job_ids``, of each job's first record of ``state``; None if one has
    no such record."""
    moments = []
    for job_id in job_ids:
        record = store.get(job_id)
        entries = [e for e in (record.history if record else []) if e.get("state") == state]
        if not entries:
            return None
        moments.append(_epoch(entries[0]["at"]))
    return max(moments, default=None)


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
