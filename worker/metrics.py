"""Prometheus metrics of a worker, served on ``RECQ_METRICS_PORT`` at ``/metrics``.

=====================================================  =========================================
``recq_jobs_total{kind,outcome}``                      jobs that reached an end state
``recq_retries_total{reason}``                         VideoSDK calls tried again, and deliveries
                                                       re-queued, by why
``recq_videosdk_request_duration_seconds{endpoint,     every VideoSDK call (histogram); status is
status}``                                              the HTTP status, or ``network``
``recq_rate_limit_wait_seconds``                       time spent waiting for a call slot, in a
                                                       thread and then on the schedule
``recq_rate_limit_requeued_total``                     jobs handed back to wait for a slot
``recq_rate_limit_pauses_total``                       429 answers that paused every worker
``recq_scheduled_jobs``                                entries on the schedule (read at scrape)
``recq_pending_jobs``                                  messages waiting on the job queue (read at
                                                       scrape)
=====================================================  =========================================

Counters live in the worker process (the default thread pool runs every job there); the two
gauges are read from Redis and the broker when Prometheus scrapes, so any one worker reports the
fleet's figures for them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from worker.errors import UpstreamUnavailable

logger = logging.getLogger(__name__)

CALL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


def retry_reason(error: UpstreamUnavailable) -> str:
    """Why a call is tried again: ``too_many_requests``, ``server_error`` or ``network``."""
    if error.too_many_requests:
        return "too_many_requests"
    return "server_error" if error.answer is not None else "network"


class Metrics:
    """The metrics one worker process records, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.jobs = Counter(
            "recq_jobs", "Jobs that reached an end state.", ["kind", "outcome"], registry=r
        )
        self.retries = Counter(
            "recq_retries",
            "VideoSDK calls tried again, and deliveries re-queued after an outage, by reason.",
            ["reason"],
            registry=r,
        )
        self.calls = Histogram(
            "recq_videosdk_request_duration_seconds",
            "Time of each VideoSDK call, by endpoint and HTTP status (network: no answer).",
            ["endpoint", "status"],
            buckets=CALL_BUCKETS,
            registry=r,
        )
        self.rate_limit_wait = Histogram(
            "recq_rate_limit_wait_seconds",
            "Time spent waiting for a call slot under RECQ_RATE_LIMIT: in the worker's thread, "
            "plus the wait on the schedule a job is handed back for.",
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.rate_limit_requeued = Counter(
            "recq_rate_limit_requeued",
            "Jobs handed back to the schedule to wait for a rate-limit slot.",
            registry=r,
        )
        self.rate_limit_pauses = Counter(
            "recq_rate_limit_pauses",
            "429 answers that paused every worker's calls.",
            registry=r,
        )

    def observe_call(self, endpoint: str, status: int | None, seconds: float) -> None:
        """One VideoSDK call took ``seconds`` and was answered ``status`` (None: no answer)."""
        label = str(status) if status is not None else "network"
        self.calls.labels(endpoint=endpoint, status=label).observe(seconds)

    def watch(self, scheduled: Callable[[], int], pending: Callable[[], int]) -> None:
        """Report the schedule's and the queue's sizes, read when Prometheus scrapes."""
        self.registry.register(_Backlog(scheduled, pending))

    def serve(self, port: int, address: str = "0.0.0.0") -> None:  # noqa: S104
        """Serve ``/metrics`` on ``address``:``port`` from a daemon thread."""
        start_http_server(port, addr=address, registry=self.registry)
        logger.info("serving Prometheus metrics on %s port %d", address, port)


class _Backlog(Collector):
    """The gauges read at scrape time; a source that cannot be read is left out, and logged."""

    def __init__(self, scheduled: Callable[[], int], pending: Callable[[], int]) -> None:
        self._sources = {
            "recq_scheduled_jobs": ("Jobs waiting on the schedule for their time.", scheduled),
            "recq_pending_jobs": ("Messages waiting on the job queue.", pending),
        }

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, (documentation, read) in self._sources.items():
            try:
                value = read()
            except Exception as exc:  # noqa: BLE001 - any source failing leaves its gauge out
                logger.warning("could not read %s: %s", name, exc)
                continue
            yield GaugeMetricFamily(name, documentation, value=value)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Without describe(), registering would call collect() (and Redis) at once.
        for name, (documentation, _read) in self._sources.items():
            yield GaugeMetricFamily(name, documentation)
