"""Hypothesis-generated malformed jobs, published straight onto the broker past the producer.

None reaches VideoSDK, each is recorded as failed with a reason under its id, and the worker is
still consuming afterwards.
"""

from __future__ import annotations

import time
import uuid

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from worker.errors import InvalidJob
from worker.jobs import KINDS, START_RECORDING
from worker.messages import job_id_of
from worker.producer import Producer
from worker.state import State
from worker.validation import validate

pytestmark = pytest.mark.integration

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
corrupted = st.fixed_dictionaries(
    {"roomId": st.one_of(st.text(max_size=300), json_values)},
    optional={
        "config": st.fixed_dictionaries(
            {"layout": st.fixed_dictionaries({"gridSize": st.integers() | json_values})}
        ),
        "kind": json_values,
        "participantId": json_values,
        "webhookUrl": st.text(max_size=50),
        "jobId": json_values,
        "metadata": json_values,
    },
)
malformed = st.one_of(json_values, corrupted, st.dictionaries(st.text(max_size=12), json_values))


def invalid(kind_name: str, job: object) -> bool:
    try:
        validate(kind_name, job)
    except InvalidJob:
        return True
    return False


def test_malformed_jobs_fail_with_a_reason_and_never_reach_videosdk(app, sandbox, running_worker):
    """Any invalid job published raw ends failed with invalid_job; VideoSDK is never called."""
    published: set[str] = set()

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(kind=st.sampled_from(KINDS), job=malformed)
    def publish(kind, job):
        assume(invalid(kind.name, job))
        task_id = f"fuzz-{uuid.uuid4().hex}"
        app.send_task(kind.task_name, kwargs={"job": job}, task_id=task_id)
        published.add(job_id_of(job, task_id))

    publish()
    assert published, "hypothesis generated no invalid job"
    deadline = time.monotonic() + 60
    pending = set(published)
    while pending and time.monotonic() < deadline:
        for job_id in list(pending):
            record = app.store.get(job_id)
            if record is not None and record.state is State.FAILED:
                assert record.error["reason"] == "invalid_job"
                pending.discard(job_id)
        time.sleep(0.1)
    print(f"\nmalformed jobs: {len(published)} published, {len(pending)} unrecorded")
    assert not pending
    assert sandbox.calls == []
    good = Producer(app).enqueue(START_RECORDING, {"roomId": "after-the-storm"})
    while (record := app.store.get(good)) is None or not record.state.terminal:
        assert time.monotonic() < deadline + 20
        time.sleep(0.05)
    assert record.state is State.SUCCEEDED
