"""The recording tasks, to start and to stop: one keyword argument, ``job``, the JSON object a
producer published.

A task hands its message's arguments and id to the app's runner, which checks them, validates
the job again (producers are not trusted), calls VideoSDK and reports. Arguments of the wrong
shape are recorded as an invalid job by the runner, like any other.

When Redis or the broker fails the delivery (the state store still down after the client's
retries), the message is handed back to the queue (``Reject(requeue=True)``) to be delivered
again: Celery would otherwise acknowledge a failed task and the job would be lost, left in
whatever state it last had. Such deliveries repeat as long as the outage lasts; one that
claims the job counts as a delivery, so past ``RECQ_MAX_DELIVERIES`` the job fails.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, cast

from celery import Task, shared_task
from celery.exceptions import Reject

from worker.errors import UNREACHABLE
from worker.jobs import (
    BULK_TRACK_RECORDING,
    START_RECORDING,
    START_TRACK_RECORDING,
    STOP_RECORDING,
    STOP_TRACK_RECORDING,
    JobKind,
)
from worker.logs import job_context

if TYPE_CHECKING:
    from worker.celery_app import RecqCelery

logger = logging.getLogger(__name__)
REDELIVERY_PAUSE = 1.0
"""Seconds a delivery that Redis or the broker failed waits before handing its message back."""


def _run(
    task: Task[Any, Any], kind: JobKind, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    app = cast("RecqCelery", task.app)
    job_id = str(task.request.id)
    with job_context(job_id):
        try:
            app.runner.run_message(kind, args, kwargs, task_id=job_id)
        except UNREACHABLE as exc:
            logger.warning("job %s handed back to the queue: %s", job_id, type(exc).__name__)
            time.sleep(REDELIVERY_PAUSE)  # an error that comes at once must not spin
            raise Reject(type(exc).__name__, requeue=True) from None


@shared_task(name=START_RECORDING.task_name, bind=True)
def start_recording(self: Task[Any, Any], *args: Any, **kwargs: Any) -> None:
    """Start recording a room (``POST /v2/recordings/start``)."""
    _run(self, START_RECORDING, args, kwargs)


@shared_task(name=START_TRACK_RECORDING.task_name, bind=True)
def start_track_recording(self: Task[Any, Any], *args: Any, **kwargs: Any) -> None:
    """Start recording one participant's track (``POST /v2/recordings/participant/track/start``)."""
    _run(self, START_TRACK_RECORDING, args, kwargs)


@shared_task(name=STOP_RECORDING.task_name, bind=True)
def stop_recording(self: Task[Any, Any], *args: Any, **kwargs: Any) -> None:
    """Stop recording a room (``POST /v2/recordings/end``)."""
    _run(self, STOP_RECORDING, args, kwargs)


@shared_task(name=STOP_TRACK_RECORDING.task_name, bind=True)
def stop_track_recording(self: Task[Any, Any], *args: Any, **kwargs: Any) -> None:
    """Stop recording one participant's track (``POST /v2/recordings/participant/track/stop``)."""
    _run(self, STOP_TRACK_RECORDING, args, kwargs)


@shared_task(name=BULK_TRACK_RECORDING.task_name, bind=True)
def bulk_track_recording(self: Task[Any, Any], *args: Any, **kwargs: Any) -> None:
    """Record many participants' tracks: publish one track job per participant and kind."""
    _run(self, BULK_TRACK_RECORDING, args, kwargs)
