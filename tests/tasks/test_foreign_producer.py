"""A producer in any language: a hand-built Celery message pushed with a bare Redis client.

This is exactly what the README tells a Node, Go or Java service to send; no Celery or kombu
code is used to build it.
"""

from __future__ import annotations

import base64
import json
import time
import uuid

import pytest

from worker.state import State

pytestmark = pytest.mark.integration


def celery_message(task: str, job: dict, job_id: str, queue: str) -> bytes:
    """A Celery protocol 2 message in the Redis transport's envelope, built by hand."""
    body = json.dumps([[], {"job": job}, {"callbacks": None, "errbacks": None, "chain": None}])
    envelope = {
        "body": base64.b64encode(body.encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
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


class TestForeignProducer:
    def test_a_hand_built_message_on_redis_is_run(self, app, sandbox, running_worker, redis_client):
        """LPUSH of the documented envelope onto the queue's list starts the recording."""
        job = {"roomId": "from-node", "metadata": {"producer": "node"}}
        message = celery_message("recq.start_recording", job, "node-1", app.settings.queue)
        redis_client.lpush(app.settings.queue, message)
        deadline = time.monotonic() + 20
        while (record := app.store.get("node-1")) is None or not record.state.terminal:
            assert time.monotonic() < deadline, f"job did not end: {record}"
            time.sleep(0.05)
        assert record.state is State.SUCCEEDED
        assert [c.body for c in sandbox.calls] == [{"roomId": "from-node"}]
