"""Helpers for testing systems built on recq: waiting for a job's end, hand-building a message.

Shipped with the package so that users' own integration tests (and ours) can use them.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

from worker.state import JobRecord, JobStore, State


def wait_for_state(
    store: JobStore, job_id: str, *states: State, timeout: float = 20.0
) -> JobRecord:
    """The job's record once it is in one of ``states``; TimeoutError with the last one seen."""
    deadline = time.monotonic() + timeout
    record = None
    while time.monotonic() < deadline:
        record = store.get(job_id)
        if record is not None and record.state in states:
            return record
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} did not reach {[s.value for s in states]}; last {record}")


def celery_message(
    task: str,
    job_id: str,
    *,
    queue: str = "recq",
    job: Any = None,
    body: bytes | None = None,
    content_type: str = "application/json",
) -> bytes:
    """A Celery protocol 2 task message in the Redis transport's envelope, built by hand.

    This is what a producer in any language pushes (``LPUSH <queue>``) to publish a job without
    Celery: the body ``[[], {"job": JOB}, {...}]`` base64-encoded, the task name and id in the
    headers. ``body`` overrides the encoded job, for tests of malformed messages.
    """
    if body is None:
        call = [[], {"job": job}, {"callbacks": None, "errbacks": None, "chain": None}]
        body = json.dumps(call).encode()
    envelope = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8" if content_type == "application/json" else "binary",
        "content-type": content_type,
        "headers": {"lang": "py", "task": task, "id": job_id, "root_id": job_id},
        "properties": {
            "correlation_id": job_id,
            "delivery_mode": 2,
            "delivery_tag": str(uuid.uuid4()),
            "body_encoding": "base64",
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
        },
    }
    return json.dumps(envelope).encode()
