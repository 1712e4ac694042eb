"""Publishing task messages: many per round trip on Redis, through kombu on RabbitMQ.

Producers (``enqueue_many``, ``recq enqueue``), the fan-out of a batch and the dispatcher
publish jobs by the hundred. Through Celery's ``send_task`` every message costs its own
round trips and a good deal of Python; on a Redis broker, a message is only a JSON envelope
pushed onto the queue's list (what the README tells producers in other languages to send, and
``schemas/asyncapi.yaml`` describes), so :class:`RedisPublisher` builds the envelopes itself and
pushes a whole chunk in one pipeline. On RabbitMQ, :class:`KombuPublisher` keeps to
``send_task`` (publisher confirms, the queue's declared arguments).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis

CHUNK = 500
"""Messages per pipeline."""
EMBED = {"callbacks": None, "errbacks": None, "chain": None}


@dataclass(frozen=True, slots=True)
class TaskMessage:
    """One job for a task: the task's name, the job's id (the task id) and the job."""

    task: str
    job_id: str
    job: Mapping[str, Any]


class Publisher(Protocol):
    """Puts task messages on the job queue, in order."""

    def publish(self, messages: Sequence[TaskMessage]) -> None: ...


def redis_envelope(
    task: str,
    job_id: str,
    *,
    queue: str,
    body: bytes,
    content_type: str = "application/json",
) -> bytes:
    """A Celery protocol 2 message in kombu's Redis envelope, around an encoded ``body``."""
    return kombu_envelope(
        body,
        content_type=content_type,
        content_encoding="utf-8" if content_type == "application/json" else "binary",
        headers={"lang": "py", "task": task, "id": job_id, "root_id": job_id},
        exchange="",
        routing_key=queue,
        correlation_id=job_id,
    )


def kombu_envelope(
    body: bytes,
    *,
    content_type: str,
    content_encoding: str,
    exchange: str,
    routing_key: str,
    headers: Mapping[str, Any] | None = None,
    correlation_id: str | None = None,
) -> bytes:
    """A persistent message as kombu's Redis transport stores it in a queue's list."""
    properties: dict[str, Any] = {
        "delivery_mode": 2,
        "delivery_tag": str(uuid.uuid4()),
        "body_encoding": "base64",
        "delivery_info": {"exchange": exchange, "routing_key": routing_key},
        "priority": 0,
    }
    if correlation_id is not None:
        properties["correlation_id"] = correlation_id
    envelope = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": content_encoding,
        "content-type": content_type,
        "headers": dict(headers or {}),
        "properties": properties,
    }
    return json.dumps(envelope, separators=(",", ":")).encode()


def task_body(job: Any) -> bytes:
    """The JSON body of a recq task call: ``[[], {"job": JOB}, {...}]``."""
    return json.dumps([[], {"job": job}, EMBED]).encode()


def queue_envelope(message: TaskMessage, queue: str) -> bytes:
    """``message`` as kombu's Redis transport keeps it on ``queue``'s list."""
    return redis_envelope(message.task, message.job_id, queue=queue, body=task_body(message.job))


class RedisPublisher:
    """LPUSHes envelopes onto the queue's list, :data:`CHUNK` to a round trip."""

    def __init__(self, client: redis.Redis, queue: str) -> None:
        self._redis = client
        self._queue = queue

    def publish(self, messages: Sequence[TaskMessage]) -> None:
        for start in range(0, len(messages), CHUNK):
            envelopes = [queue_envelope(m, self._queue) for m in messages[start : start + CHUNK]]
            # kombu's consumer takes from the list's right end: LPUSH keeps the order.
            self._redis.lpush(self._queue, *envelopes)


class KombuPublisher:
    """Publishes each message with Celery's ``send_task`` (and its retry policy)."""

    def __init__(self, send: Callable[[TaskMessage], None]) -> None:
        self._send = send

    def publish(self, messages: Sequence[TaskMessage]) -> None:
        for message in messages:
            self._send(message)
