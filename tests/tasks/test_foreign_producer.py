"""A producer in any language: a hand-built Celery message pushed with a bare Redis client.

This is exactly what the README tells a Node, Go or Java service to send; no Celery or kombu
code is used to build it.
"""

from __future__ import annotations

import time

import pytest

from worker.state import State
from worker.testing import celery_message

pytestmark = pytest.mark.integration


class TestForeignProducer:
    def test_a_hand_built_message_on_redis_is_run(self, app, sandbox, running_worker, redis_client):
        """LPUSH of the documented envelope onto the queue's list starts the recording."""
        job = {"roomId": "from-node", "metadata": {"producer": "node"}}
        message = celery_message(
            "recq.start_recording", "node-1", queue=app.settings.queue, job=job
        )
        redis_client.lpush(app.settings.queue, message)
        deadline = time.monotonic() + 20
        while (record := app.store.get("node-1")) is None or not record.state.terminal:
            assert time.monotonic() < deadline, f"job did not end: {record}"
            time.sleep(0.05)
        assert record.state is State.SUCCEEDED
        assert [c.body for c in sandbox.calls] == [{"roomId": "from-node"}]
