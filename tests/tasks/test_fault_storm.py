"""A fault storm: many jobs at once, each with its own scripted faults, on a real worker.

Each job targets its own room, and the sandbox's faults are scripted per room, so every job's
expected end is known however the worker interleaves them. Retry waits are recorded, not spent.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import pytest

from worker.jobs import START_RECORDING
from worker.producer import Producer
from worker.sandbox import Fault
from worker.state import State

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Scenario:
    name: str
    faults: tuple[Fault, ...]
    state: State
    attempts: int
    reason: str | None = None
    reconciled: bool = False


SCENARIOS = (
    Scenario("clean", (), State.SUCCEEDED, 1),
    Scenario("two 503s", (Fault(status=503, times=2),), State.SUCCEEDED, 3),
    Scenario("502 then 504", (Fault(status=502), Fault(status=504)), State.SUCCEEDED, 3),
    Scenario("429 asking 7 s", (Fault(status=429, retry_after="7"),), State.SUCCEEDED, 2),
    Scenario("429 without Retry-After", (Fault(status=429),), State.SUCCEEDED, 2),
    Scenario("dropped before applying", (Fault(drop_answer=True),), State.SUCCEEDED, 2),
    Scenario(
        "dropped after applying",
        (Fault(drop_answer=True, applies=True),),
        State.SUCCEEDED,
        2,
        reconciled=True,
    ),
    Scenario(
        "timed out after applying",
        (Fault(latency=1.5, applies=True),),
        State.SUCCEEDED,
        2,
        reconciled=True,
    ),
    Scenario("rejected", (Fault(status=400),), State.FAILED, 1, "upstream_rejected"),
    Scenario(
        "forbidden after a 503",
        (Fault(status=503), Fault(status=403)),
        State.FAILED,
        2,
        "upstream_rejected",
    ),
    Scenario("outage then recovery", (Fault(status=503, times=4),), State.SUCCEEDED, 5),
    Scenario(
        "told to wait past the outage window",
        (Fault(status=503, times=3), Fault(status=429, retry_after="7200")),
        State.FAILED,
        4,
        "upstream_unavailable",
    ),
)
COPIES = 8


@pytest.fixture
def settings(settings):
    """Four attempts a delivery, a 1 s read timeout, re-queues after 0.2 s, a 60 s outage window,
    and a 429 pauses the other jobs for 0.2 s at most (each job's own waits are what is tested)."""
    return settings.replace(
        retry_attempts=4, read_timeout=1.0, requeue_delay=0.2, outage_window=60.0, max_pause=0.2
    )


def test_every_job_ends_as_its_faults_call_for(app, sandbox, sleeps, running_worker):
    """Each scripted job ends in its expected state and attempts; Retry-After is honoured."""
    producer = Producer(app)
    expected: dict[str, Scenario] = {}
    for copy in range(COPIES):
        for number, scenario in enumerate(SCENARIOS):
            room = f"storm-{number}-{copy}"
            sandbox.inject(*(dataclasses.replace(f, room=room) for f in scenario.faults))
            job_id = producer.enqueue(START_RECORDING, {"roomId": room, "jobId": room})
            expected[job_id] = scenario
    started = time.monotonic()
    deadline = started + 90
    records = {}
    while len(records) < len(expected) and time.monotonic() < deadline:
        for job_id in expected.keys() - records.keys():
            record = app.store.get(job_id)
            if record is not None and record.state.terminal:
                records[job_id] = record
        time.sleep(0.1)
    elapsed = time.monotonic() - started
    print(f"\nfault storm: {len(expected)} jobs, {len(sandbox.calls)} calls, {elapsed:.1f} s")
    for job_id, scenario in expected.items():
        record = records.get(job_id)
        assert record is not None, f"{scenario.name}: {job_id} did not end"
        got = (record.state, record.attempts, record.reconciled)
        assert got == (scenario.state, scenario.attempts, scenario.reconciled), scenario.name
        if scenario.reason:
            assert record.error["reason"] == scenario.reason, scenario.name
    assert sum(1 for w in sleeps.waits if w >= 7) == COPIES, "each 429 asked 7 s and got them"
    for room in (f"storm-{n}-{c}" for n in range(len(SCENARIOS)) for c in range(COPIES)):
        accepted = [c for c in sandbox.accepted("/v2/recordings/start") if c.body["roomId"] == room]
        assert len(accepted) <= 1, f"{room} was started twice"
