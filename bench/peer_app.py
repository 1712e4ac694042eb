"""The peer: the plain Celery task a user would write first, to compare recq with.

One task, Celery's defaults (JSON, early acknowledgement, prefetch of four per thread, no
result backend), one ``requests.post`` per job (a new connection each time, as the first
version of such a task does) with the token recq signs and the body recq sends. No validation,
no state, no retries, no events. Run by the benchmark as
``celery -A bench.peer_app worker --pool threads --concurrency N``, configured by the
environment: ``CELERY_BROKER_URL``, ``VIDEOSDK_API_ENDPOINT`` and ``VIDEOSDK_TOKEN``.
"""

from __future__ import annotations

import os

import requests
from celery import Celery

TASK = "peer.start_recording"

app = Celery("peer", broker=os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0"))


@app.task(name=TASK)
def start_recording(room_id: str) -> None:
    """Start the room's recording."""
    response = requests.post(
        os.environ["VIDEOSDK_API_ENDPOINT"] + "/v2/recordings/start",
        json={"roomId": room_id},
        headers={"Authorization": os.environ["VIDEOSDK_TOKEN"]},
        timeout=30,
    )
    response.raise_for_status()
