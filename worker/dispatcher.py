"""The dispatcher: every worker publishes the deliveries that have come due on the schedule.

It runs as a Celery bootstep, a thread beside the consumer, so that no extra process type has to
be deployed. However many workers run, each due delivery is taken by exactly one of them (see
:mod:`worker.schedule`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from celery import bootsteps

from worker.schedule import Delivery, Schedule

logger = logging.getLogger(__name__)


class Dispatcher:
    """Polls the schedule and publishes what is due, until stopped."""

    def __init__(
        self,
        schedule: Schedule,
        publish: Callable[[Delivery], None],
        *,
        interval: float = 0.5,
    ) -> None:
        self._schedule = schedule
        self._publish = publish
        self._interval = interval
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="recq-dispatcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def tick(self) -> int:
        """Publish every delivery due now; return how many were published."""
        self._schedule.recover()
        published = 0
        for delivery in self._schedule.take_due():
            self._publish(delivery)
            self._schedule.done(delivery.job_id)
            published += 1
        return published

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.tick()
            except Exception:
                # Redis or the broker is away: what was taken is recovered when its lease ends.
                logger.exception("the dispatcher could not publish due deliveries; retrying")
                self._stopping.wait(self._interval * 4)
            self._stopping.wait(self._interval)


class DispatcherStep(bootsteps.StartStopStep):
    """Runs a :class:`Dispatcher` in every recq worker."""

    label = "recq dispatcher"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.dispatcher: Dispatcher | None = None

    def start(self, parent: Any) -> None:
        app = parent.app
        self.dispatcher = Dispatcher(app.schedule, app.publish_delivery)
        self.dispatcher.start()

    def stop(self, parent: Any) -> None:
        if self.dispatcher is not None:
            self.dispatcher.stop()

    shutdown = stop
