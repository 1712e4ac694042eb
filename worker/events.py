"""Result events: CloudEvents 1.0 in structured JSON mode, on the ``recq.events`` topic exchange.

The event type is the routing key (``recording.started``, ``track_recording.failed``...), so a
subscriber in any language binds a queue to the exchange with only the keys it needs
(``recording.*``, ``*.failed``, ``#``). Every event is also appended to the event log in Redis
(:mod:`worker.event_log`), from which ``recq events`` reads, since an exchange keeps nothing for
subscribers that were not bound yet.

On RabbitMQ, kombu publishes (:class:`ExchangeSink`). On a Redis broker the exchange is kombu's
emulation: a set of bindings, each a routing-key pattern and a queue's list. Publishing through
kombu reads that set, matches it in Python and pushes to each list, a fifth of a worker's time
per job; :class:`RedisExchangeSink` does the same in one Lua script, inside Redis, with the
same matching (``*`` one word, ``#`` any words) and the envelope kombu would have pushed, and
appends to the event log in that call too when the log lives on the broker's Redis. When that
Redis is also the state store (the default), the state write an event reports and the event go
to Redis in one round trip (:meth:`Events.publish` with ``after``).
"""

from __future__ import annotations

import json
import logging
import socket
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import kombu
import redis
from kombu.transport import redis as kombu_redis

from worker.errors import ErrorInfo, Target
from worker.event_log import EVENT_FIELD, MAX_EVENTS, EventLog
from worker.publisher import kombu_envelope
from worker.redact import redact_values
from worker.scripts import ScriptCall, run_together
from worker.state import State, epoch_iso, iso, utc_now

logger = logging.getLogger(__name__)

EXCHANGE = kombu.Exchange("recq.events", type="topic", durable=True)
CONTENT_TYPE = "application/cloudevents+json"
# Publishing an event is retried briefly; the job's state in Redis stays the source of truth.
PUBLISH_RETRY = {"max_retries": 3, "interval_start": 0.1, "interval_step": 0.5, "interval_max": 1}

Event = dict[str, Any]


def build_event(
    event_type: str,
    *,
    job_id: str,
    kind: str,
    state: State,
    target: Target,
    attempt: int,
    metadata: Mapping[str, Any] | None,
    error: ErrorInfo | None = None,
    reconciled: bool = False,
    due_at: float | None = None,
    deadline: float | None = None,
    batch_id: str | None = None,
    counts: Mapping[str, int] | None = None,
    children: Sequence[Mapping[str, Any]] | None = None,
    source: str | None = None,
) -> Event:
    """A CloudEvent describing what happened to one job."""
    data: dict[str, Any] = {
        "jobId": job_id,
        "kind": kind,
        "state": state.value,
        "target": target.to_json(),
        "attempt": attempt,
        "metadata": redact_values(metadata or {}),
    }
    if error is not None:
        data["error"] = error.to_json()
    if reconciled:
        data["reconciled"] = True
    if due_at is not None:
        data["dueAt"] = epoch_iso(due_at)
    if deadline is not None:
        data["deadline"] = epoch_iso(deadline)
    if batch_id is not None:
        data["batchId"] = batch_id
    if counts is not None:
        data["counts"] = dict(counts)
    if children is not None:
        data["children"] = [dict(child) for child in children]
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": source or f"urn:recq:worker:{socket.gethostname()}",
        "type": event_type,
        "subject": job_id,
        "time": iso(utc_now()),
        "datacontenttype": "application/json",
        "data": data,
    }


class EventSink(Protocol):
    """Somewhere events go."""

    def publish(self, event: Event) -> None: ...


class ExchangeSink:
    """Publishes events on the topic exchange, through the broker connection pool."""

    def __init__(
        self,
        acquire: Callable[[], AbstractContextManager[kombu.Producer]],
        exchange: kombu.Exchange = EXCHANGE,
    ) -> None:
        self._acquire = acquire
        self._exchange = exchange

    def publish(self, event: Event) -> None:
        body = json.dumps(event, separators=(",", ":"))
        with self._acquire() as producer:
            producer.publish(
                body,
                exchange=self._exchange,
                routing_key=event["type"],
                content_type=CONTENT_TYPE,
                content_encoding="utf-8",
                declare=[self._exchange],
                delivery_mode=2,  # persistent
                retry=True,
                retry_policy=PUBLISH_RETRY,
            )


# KEYS: the exchange's binding set, then (optional) the event log's stream.
# ARGV: kombu's separator, routing key, envelope, then (with the log) the log's field, the event
# and the log's length. kombu keeps each binding as "<binding key><sep><regex><sep><queue>"; the
# binding key's words are matched as kombu's regex does: "*" one word, "#" any characters, others
# literally.
_PUBLISH = r"""
local function matches(binding, key)
  local parts = {}
  for word in (binding .. '.'):gmatch('(.-)%.') do
    if word == '*' then
      parts[#parts + 1] = '[^%.]+'
    elseif word == '#' then
      parts[#parts + 1] = '.-'
    else
      parts[#parts + 1] = (word:gsub('[^%w]', '%%%0'))
    end
  end
  return string.find(key, '^' .. table.concat(parts, '%.') .. '$') ~= nil
end
if KEYS[2] then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', ARGV[4], ARGV[5])
end
local sep = ARGV[1]:gsub('%W', '%%%0')
local pushed = {}
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local binding, queue = string.match(member, '^(.-)' .. sep .. '.-' .. sep .. '(.*)$')
  if queue and queue ~= '' and not pushed[queue] and matches(binding, ARGV[2]) then
    pushed[queue] = true
    redis.call('LPUSH', queue, ARGV[3])
  end
end
return 0
"""


class RedisExchangeSink:
    """Publishes events on a Redis broker's emulated topic exchange in one script; with
    ``log``, which must be on the same Redis, appends each to the event log in the same call."""

    def __init__(
        self,
        client: redis.Redis,
        exchange: kombu.Exchange = EXCHANGE,
        *,
        log: EventLog | None = None,
    ) -> None:
        self.client = client
        self._script = client.register_script(_PUBLISH)
        self._exchange = exchange.name
        bindings = kombu_redis.Channel.keyprefix_queue % (exchange.name,)
        self._keys = [bindings] + ([log.key] if log else [])

    def publish(self, event: Event) -> None:
        self.call(event).run()

    def call(self, event: Event) -> ScriptCall:
        """The script call that publishes ``event`` (for a round trip shared with others)."""
        body = json.dumps(event, separators=(",", ":"))
        envelope = kombu_envelope(
            body.encode(),
            content_type=CONTENT_TYPE,
            content_encoding="utf-8",
            exchange=self._exchange,
            routing_key=event["type"],
        )
        args: list[str | bytes | int] = [kombu_redis.Channel.sep, event["type"], envelope]
        if len(self._keys) > 1:
            args += [EVENT_FIELD, body, MAX_EVENTS]
        return ScriptCall(self.client, self._script, self._keys, args)


class Events:
    """Sends every event to each sink; a sink that fails is logged, never fatal to the job."""

    def __init__(self, sinks: Sequence[EventSink]) -> None:
        self._sinks = tuple(sinks)

    def publish(self, event: Event, *, after: ScriptCall | None = None) -> None:
        """Send ``event`` to every sink.

        With ``after``, the state write the event reports: the write is made first, in the same
        round trip as the sinks that publish on its Redis client (a Redis broker that is also
        the state store, the default). The write's failure raises, as the write alone would; a
        sink's failure is only logged.
        """
        rest: Sequence[EventSink] = self._sinks
        if after is not None:
            joined = [
                sink
                for sink in self._sinks
                if isinstance(sink, RedisExchangeSink) and sink.client is after.client
            ]
            rest = [sink for sink in self._sinks if sink not in joined]
            written, *published = run_together([after, *(sink.call(event) for sink in joined)])
            if isinstance(written, Exception):
                raise written
            for shared, answer in zip(joined, published, strict=True):
                if isinstance(answer, Exception):
                    logger.error(_UNPUBLISHED, *_naming(event, shared), exc_info=answer)
        for sink in rest:
            try:
                sink.publish(event)
            except Exception:
                # The job's outcome is already in its state; an unpublished event must not undo it.
                logger.exception(_UNPUBLISHED, *_naming(event, sink))


_UNPUBLISHED = "could not publish %s for job %s to %s"


def _naming(event: Event, sink: EventSink) -> tuple[str, str, str]:
    return event["type"], event["subject"], type(sink).__name__
