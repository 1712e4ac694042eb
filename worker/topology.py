"""Where jobs wait on RabbitMQ: a durable quorum queue, with a dead-letter exchange beside it.

On Redis a queue is a list and takes no arguments. On RabbitMQ, recq declares what an operator
expects of a queue that must not lose work:

- ``recq`` (``RECQ_QUEUE``): durable, ``x-queue-type: quorum`` (replicated, and Celery then uses
  per-consumer prefetch), bound to a topic exchange of the same name with the queue's name as its
  routing key. The AMQP default exchange reaches it too, by its name: a producer in any language
  can publish to ``""`` with routing key ``recq``.
- ``x-delivery-limit``: a message redelivered that many times (a job that kills its worker before
  recq's own delivery count in Redis can see it) is dead-lettered instead of looping forever.
- ``x-dead-letter-exchange: recq.dead`` (``<queue>.dead``): what the queue rejects (a message
  that is not a task, an unknown task name, Celery's ``eta`` or ``expires``; recq records each
  as a failed job) or gives up on lands in the durable quorum queue ``recq.dead``, where an
  operator can read it. A body that cannot be decoded is recorded and acknowledged instead.
  Jobs that fail as jobs are acknowledged and kept in recq's own dead-letter store (``recq dead
  list``).

Every party that declares the queue must use the same arguments, or RabbitMQ refuses the second
declaration with ``PRECONDITION_FAILED``: workers and recq's producer declare it from here; a
producer in another language should publish without declaring (the AsyncAPI document says so).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import kombu
from celery import bootsteps

from worker.events import EXCHANGE as EVENTS_EXCHANGE
from worker.settings import Settings

AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")
DELIVERY_LIMIT = 20
"""Redeliveries before RabbitMQ dead-letters a message; well above ``RECQ_MAX_DELIVERIES``."""


def is_amqp(url: str) -> bool:
    """Whether ``url`` names a RabbitMQ (AMQP 0-9-1) broker."""
    return urlsplit(url).scheme in AMQP_SCHEMES


def dead_letter_name(settings: Settings) -> str:
    """The dead-letter exchange and queue of the job queue."""
    return f"{settings.queue}.dead"


def job_queue(settings: Settings) -> kombu.Queue:
    """The job queue as declared on RabbitMQ."""
    return kombu.Queue(
        settings.queue,
        kombu.Exchange(settings.queue, type="topic", durable=True),
        routing_key=settings.queue,
        durable=True,
        queue_arguments={
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": dead_letter_name(settings),
            "x-delivery-limit": DELIVERY_LIMIT,
        },
    )


def dead_letter_queue(settings: Settings) -> kombu.Queue:
    """The queue that keeps what the job queue dead-letters."""
    name = dead_letter_name(settings)
    return kombu.Queue(
        name,
        kombu.Exchange(name, type="fanout", durable=True),
        durable=True,
        queue_arguments={"x-queue-type": "quorum"},
    )


def amqp_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings that route jobs through :func:`job_queue`."""
    return {
        "task_queues": [job_queue(settings)],
        "task_default_exchange": settings.queue,
        "task_default_exchange_type": "topic",
        "task_default_routing_key": settings.queue,
        # Publisher confirms: a job recq says it published is on the broker, not in a socket.
        "broker_transport_options": {"confirm_publish": True},
    }


class TopologyStep(bootsteps.StartStopStep):
    """Declares the dead-letter queue and the events exchange when a worker's consumer connects.

    Subscribers can then bind to ``recq.events`` before the first event is ever published.
    """

    label = "recq topology"
    requires = ("celery.worker.consumer.connection:Connection",)

    def start(self, parent: Any) -> None:
        queue = dead_letter_queue(parent.app.settings)
        with parent.app.connection_for_write() as connection:
            channel = connection.default_channel
            queue(channel).declare()
            EVENTS_EXCHANGE(channel).declare()
