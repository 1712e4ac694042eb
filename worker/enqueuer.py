"""Putting jobs on the queue: each recorded ``queued`` and its message published, unless the job
already ended (its outcome stands, and it is not published again).

Producers (``enqueue``, ``enqueue_many``, ``recq enqueue``) and a batch's fan-out both do it, a
chunk of jobs at a time. Where the broker is the state store's Redis (the default),
:class:`RecordAndPush` writes each job's record and pushes its message in one script: a job is
never recorded queued without its message, even if the producer dies between the two, and a job
takes one round trip. Elsewhere (RabbitMQ, or a Redis broker of its own) :class:`RecordThenPublish`
writes the records in one round trip and then publishes the messages of those not ended; if the
broker fails a producer's publish, the records it had just created are withdrawn.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol

from worker.errors import UNREACHABLE
from worker.publisher import TaskMessage, queue_envelope
from worker.state import JobStore, Queued, State

NewJob = tuple[Queued, TaskMessage]
"""A job's record and its message."""


class Enqueuer(Protocol):
    """Records jobs queued and publishes their messages, in order; for each job, None, or the
    state it had ended in (it was left as it was, and not published)."""

    def enqueue(self, jobs: Sequence[NewJob]) -> list[State | None]: ...


class RecordAndPush:
    """Each job's record and its message in one script, on a Redis broker that is the store's."""

    def __init__(self, store: JobStore, queue: str) -> None:
        self._store = store
        self._queue = queue

    def enqueue(self, jobs: Sequence[NewJob]) -> list[State | None]:
        queue = self._queue
        return self._store.enqueue_many(
            [replace(job, push=(queue, queue_envelope(message, queue))) for job, message in jobs]
        )


class RecordThenPublish:
    """The records in one round trip, then the messages of the jobs that had not ended."""

    def __init__(
        self,
        store: JobStore,
        publish: Callable[[Sequence[TaskMessage]], None],
        *,
        withdraw: bool = False,
    ) -> None:
        self._store = store
        self._publish = publish
        self._withdraw = withdraw

    def enqueue(self, jobs: Sequence[NewJob]) -> list[State | None]:
        ended = self._store.enqueue_many([record for record, _ in jobs])
        messages = [message for (_, message), done in zip(jobs, ended, strict=True) if done is None]
        try:
            self._publish(messages)
        except UNREACHABLE:
            if self._withdraw:
                # A producer is told; no job it never learns the id of is left recorded queued
                # with nothing on its way. A message that did get through runs all the same: a
                # worker records a job it finds no record of.
                with contextlib.suppress(*UNREACHABLE):
                    self._store.withdraw([message.job_id for message in messages])
            raise
        return ended
