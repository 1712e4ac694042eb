"""The metrics a worker records, read from its registry after real jobs on a real worker."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import generate_latest

from worker.celery_app import create_app
from worker.jobs import START_RECORDING
from worker.producer import Producer
from worker.rate_limit import parse_rate
from worker.sandbox import Fault
from worker.state import State
from worker.testing import wait_for_state

pytestmark = pytest.mark.integration
START = "/v2/recordings/start"


def _value(app, name: str, **labels: str) -> float:
    return app.metrics.registry.get_sample_value(name, labels) or 0.0


def _run(app, job: dict) -> State:
    job_id = Producer(app).enqueue(START_RECORDING, job)
    return wait_for_state(app.store, job_id, State.SUCCEEDED, State.FAILED).state


class TestJobAndCallMetrics:
    def test_a_succeeded_job_is_counted_with_its_call(self, app, running_worker):
        """One job: recq_jobs_total{succeeded} and one 200 in the call histogram."""
        assert _run(app, {"roomId": "m-1"}) is State.SUCCEEDED
        assert _value(app, "recq_jobs_total", kind="start-recording", outcome="succeeded") == 1
        calls = _value(
            app, "recq_videosdk_request_duration_seconds_count", endpoint=START, status="200"
        )
        assert calls == 1

    def test_a_retried_call_is_counted_by_reason_and_status(self, app, sandbox, running_worker):
        """A 503 then a 200: one server_error retry, one call of each status."""
        sandbox.inject(Fault(status=503))
        assert _run(app, {"roomId": "m-2"}) is State.SUCCEEDED
        assert _value(app, "recq_retries_total", reason="server_error") == 1
        for status in ("503", "200"):
            count = _value(
                app, "recq_videosdk_request_duration_seconds_count", endpoint=START, status=status
            )
            assert count == 1

    def test_a_failed_job_is_counted_as_failed(self, app, sandbox, running_worker):
        """A 400 from VideoSDK ends the job failed, and counted so."""
        sandbox.inject(Fault(status=400))
        assert _run(app, {"roomId": "m-3"}) is State.FAILED
        assert _value(app, "recq_jobs_total", kind="start-recording", outcome="failed") == 1


class TestRateLimitMetrics:
    @pytest.fixture
    def settings(self, settings):
        return settings.replace(rate_limit=parse_rate("100/s"), max_pause=0.2)

    def test_slot_waits_and_429_pauses_are_counted(self, app, sandbox, running_worker):
        """Each call waits for a slot (observed); a 429 pauses the fleet once (counted)."""
        sandbox.inject(Fault(status=429))
        assert _run(app, {"roomId": "m-4"}) is State.SUCCEEDED
        assert _value(app, "recq_rate_limit_wait_seconds_count") == 2
        assert _value(app, "recq_rate_limit_pauses_total") == 1
        assert _value(app, "recq_retries_total", reason="too_many_requests") == 1


class TestBacklogGauges:
    def test_scheduled_and_pending_jobs_are_read_when_scraped(self, app):
        """A job due later counts as scheduled, a job published with no worker as pending."""
        producer = Producer(app)
        later = (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
        producer.enqueue(START_RECORDING, {"roomId": "later", "startAt": later})
        producer.enqueue(START_RECORDING, {"roomId": "now"})
        assert _value(app, "recq_scheduled_jobs") == 1
        assert _value(app, "recq_pending_jobs") == 1

    def test_pending_jobs_are_counted_on_the_broker_when_it_is_not_the_state_store(
        self, settings, redis_url
    ):
        """A Redis broker on another database than the state: the queue is read where it is."""
        broker = redis_url.rsplit("/", 1)[0] + "/1"
        app = create_app(settings.replace(broker_url=broker))
        try:
            Producer(app).enqueue(START_RECORDING, {"roomId": "elsewhere"})
            assert _value(app, "recq_pending_jobs") == 1
        finally:
            app.broker_redis.delete(settings.queue)
            app.close()

    def test_a_scrape_while_redis_is_silent_answers_without_the_backlog(
        self, settings, silent_port
    ):
        """Redis accepts connections and never answers: the scrape still answers, within a
        scraper's 10 s (it took 30 s and more, past Prometheus's timeout, losing every
        metric), with the counters and without the two gauges it could not read."""
        silent = f"redis://127.0.0.1:{silent_port}/0"
        app = create_app(settings.replace(broker_url=silent, redis_url=silent))
        try:
            began = time.monotonic()
            scraped = generate_latest(app.metrics.registry).decode()
            took = time.monotonic() - began
        finally:
            app.close()
        assert took < 10, f"the scrape took {took:.1f} s"
        assert "recq_jobs_total" in scraped
        assert "recq_pending_jobs" not in scraped
        assert "recq_scheduled_jobs" not in scraped
