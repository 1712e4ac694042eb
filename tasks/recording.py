"""The recording tasks: one keyword argument, ``job``, the JSON object a producer published.

A task only finds the job's id and hands the job to the app's runner, which validates it again
(producers are not trusted), calls VideoSDK and reports. Nothing here is business logic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from celery import Task, shared_task

from worker.jobs import START_RECORDING, START_TRACK_RECORDING, JobKind

if TYPE_CHECKING:
    from worker.celery_app import RecqCelery


def job_id_of(job: object, task_id: str) -> str:
    """A job's id: its ``jobId`` when it names one, else the message's task id."""
    if isinstance(job, dict):
        given = job.get("jobId")
        if isinstance(given, str) and given:
            return given
    return task_id


def _run(task: Task[Any, Any], kind: JobKind, job: object) -> None:
    app = cast("RecqCelery", task.app)
    app.runner.run(kind, job, job_id=job_id_of(job, str(task.request.id)))


@shared_task(name=START_RECORDING.task_name, bind=True)
def start_recording(self: Task[Any, Any], job: object = None) -> None:
    """Start recording a room (``POST /v2/recordings/start``)."""
    _run(self, START_RECORDING, job)


@shared_task(name=START_TRACK_RECORDING.task_name, bind=True)
def start_track_recording(self: Task[Any, Any], job: object = None) -> None:
    """Start recording one participant's track (``POST /v2/recordings/participant/track/start``)."""
    _run(self, START_TRACK_RECORDING, job)
