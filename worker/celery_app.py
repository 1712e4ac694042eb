"""The Celery app factory: our delivery semantics, and the parts a worker runs jobs with.

:func:`create_app` takes a :class:`~worker.settings.Settings` and returns a configured app;
``worker.app`` builds the one ``celery -A worker.app worker`` and ``recq`` use from the
environment, and tests build their own. The app carries the settings and builds, once and
lazily, the Redis client, the job store, the event sinks and (in a worker) the job runner.
"""

from __future__ import annotations

import errno
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

import redis
from celery import Celery, signals
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from worker.batches import Batches
from worker.claims import Claims
from worker.clock import RedisClock
from worker.dead_letters import DeadLetters
from worker.dispatcher import DispatcherStep
from worker.enqueuer import Enqueuer, RecordAndPush, RecordThenPublish
from worker.errors import SettingsError
from worker.event_log import EventLog
from worker.events import Events, ExchangeSink, RedisExchangeSink
from worker.fanout import FanOut
from worker.health import HeartbeatStep, require_writable
from worker.logs import WorkerProgram
from worker.metrics import Metrics
from worker.producer import PUBLISH_RETRY
from worker.publisher import KombuPublisher, Publisher, RedisPublisher, TaskMessage
from worker.rate_limit import RateLimiter
from worker.reporter import Reporter
from worker.retry import RetryPolicy
from worker.runner import JobRunner, Limits
from worker.schedule import Delivery, Schedule
from worker.scheduler import Scheduler
from worker.settings import Settings
from worker.state import JobStore
from worker.tokens import TokenSigner
from worker.topology import TopologyStep, amqp_config, is_amqp
from worker.transport import NAME as REDIS_TRANSPORT
from worker.videosdk import VideoSDKClient, build_session

TASK_MODULES = ("tasks.recording",)
RESTORE_LOCK_EXPIRY = 30
"""Seconds the restore sweep's lock outlives a worker that died holding it (kombu: 300), at
most the visibility timeout."""
RedisClient = redis.Redis  # the app has a property named ``redis``


@dataclass(frozen=True, slots=True)
class Patience:
    """How a Redis client waits on a Redis that restarts, fails over or stops answering."""

    retries: int
    """Retries of a command whose connection failed (with backoff up to 2 s)."""
    read_timeout: float
    connect_timeout: float
    retry_timeouts: bool
    """Whether a command that met its read timeout is tried again."""


WORKER_PATIENCE = Patience(retries=10, read_timeout=30, connect_timeout=5, retry_timeouts=True)
"""A worker rides over a short outage: about 15 s of retries before a state write gives up and
the message is delivered again."""
SCRAPE_PATIENCE = Patience(retries=0, read_timeout=2, connect_timeout=1, retry_timeouts=False)
"""A metrics scrape reads the backlog gauges once, each within 2 s: with Redis down or silent,
the scrape still answers well within a scraper's timeout (10 s by default), without them."""
QUICK_PATIENCE = Patience(retries=1, read_timeout=2, connect_timeout=2, retry_timeouts=False)
"""Producers and the command line report a Redis that refuses within about a second, and one
that accepts but does not answer within about 10 s: redis-py retries a connection's handshake
and then its command, each ``retries`` times, so a silent Redis costs (retries + 1)² read
timeouts. One retry still rides over a pooled connection that a Redis restart closed; a
blocking read of the event log waits 1 s, within the read timeout."""


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration recq runs with (see the README's reliability notes)."""
    # Delivery semantics, and why (see docs/reliability.md for the issues behind each choice).
    config: dict[str, Any] = {
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],  # a pickled message is refused, never deserialised
        "event_serializer": "json",
        # Acknowledge after the work: a worker that dies mid-job leaves its message to be
        # redelivered, and the runner's reconciliation makes a second start harmless.
        "task_acks_late": True,
        # A failure is terminal for the broker: the runner has already recorded it and kept a
        # dead letter; redelivering would only repeat it.
        "task_acks_on_failure_or_timeout": True,
        # A worker process lost mid-job (OOM, SIGKILL of a prefork child) re-queues its message
        # instead of acknowledging it. The loop this can cause is cut by the claim's delivery
        # count: past RECQ_MAX_DELIVERIES the job fails with reason too_many_deliveries.
        "task_reject_on_worker_lost": True,
        # One message reserved per process: jobs wait on the broker, not behind a busy thread.
        "worker_prefetch_multiplier": 1,
        # Late-ack tasks cannot be acknowledged after the connection is lost; cancelling them
        # lets the broker redeliver them instead of running them twice (celery#6654).
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        # SIGTERM: finish running jobs for up to one job's budget, then re-queue what is left.
        "worker_soft_shutdown_timeout": settings.job_budget,
        "worker_enable_soft_shutdown_on_idle": True,
        "worker_consumer": "worker.consumer:RecqConsumer",
        # Nobody reads task results: outcomes live in the job store and the events.
        "task_ignore_result": True,
        "result_backend": None,
        "task_default_queue": settings.queue,
        "task_create_missing_queues": True,
        "worker_hijack_root_logger": False,
    }
    if urlsplit(settings.broker_url).scheme in ("redis", "rediss"):
        # The visibility timeout must outlast a job's longest delivery (Settings checks it), and
        # be set alike in all three places or the shortest wins (Celery's Redis caveats).
        # The restore sweep runs every 10 s instead of every 100 s (kombu's default throttle),
        # so a dead worker's messages come back within visibility_timeout + 10 s. A sweep
        # holds a lock in Redis, which kombu lets expire after 300 s: a worker killed while
        # sweeping kept every other worker from sweeping for five minutes. Expiring within the
        # visibility timeout, it is gone before the dead worker's own messages are due; a
        # sweep that outlasts it and overlaps another is safe (each message is restored in a
        # transaction that watches the unacked hash).
        # One priority step keeps the queue one Redis list, which recq's transport fetches
        # without the window in which kombu's can lose a message (worker/transport.py).
        transport = {
            "visibility_timeout": settings.visibility_timeout,
            "priority_steps": [0],
            "unacked_restore_interval": 10,
            "unacked_restore_throttle": 1,
            "unacked_mutex_expire": min(RESTORE_LOCK_EXPIRY, settings.visibility_timeout),
            "socket_timeout": 30,
            "socket_connect_timeout": 10,
            "socket_keepalive": True,
            "health_check_interval": 25,
            "retry_on_timeout": True,
        }
        config["broker_transport_options"] = transport
        config["broker_transport"] = REDIS_TRANSPORT
        config["result_backend_transport_options"] = {
            "visibility_timeout": settings.visibility_timeout
        }
        config["visibility_timeout"] = settings.visibility_timeout
    elif is_amqp(settings.broker_url):
        config.update(amqp_config(settings))
    return config


class RecqCelery(Celery):
    """A Celery app that knows its settings and builds recq's parts on first use."""

    log_cls = "worker.logs:RecqLogging"

    @cached_property
    def Worker(self) -> Any:  # noqa: N802 (Celery names it so)
        """Celery's worker program, logging its shutdown notices with JSON logs."""
        return self.subclass_with_self(WorkerProgram)

    def __init__(
        self,
        settings: Settings,
        *,
        sleep: Callable[[float], None] = time.sleep,
        patience: Patience = WORKER_PATIENCE,
    ) -> None:
        super().__init__("recq", broker=settings.broker_url, set_as_current=False)
        self.settings = settings
        self._sleep = sleep
        self._patience = patience
        self._runner: JobRunner | None = None
        self._clients: list[redis.Redis] = []
        self._lock = threading.Lock()

    def redis_client(self, patience: Patience, *, url: str | None = None) -> redis.Redis:
        """A client of the state store (or of ``url``) that waits as ``patience`` says."""
        retried: list[type[Exception]] = [redis.ConnectionError]
        if patience.retry_timeouts:
            retried.append(redis.TimeoutError)
        url = url or self.settings.redis_url
        # TCP keepalive has no meaning on a Unix socket, whose connections refuse the option.
        keepalive = {} if url.startswith("unix:") else {"socket_keepalive": True}
        client = redis.Redis.from_url(
            url,
            socket_timeout=patience.read_timeout,
            socket_connect_timeout=patience.connect_timeout,
            **keepalive,
            health_check_interval=25,
            retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=patience.retries),
            retry_on_error=retried,
        )
        self._clients.append(client)
        return client

    def close(self) -> None:
        """Close the broker connections and every Redis client this app opened."""
        super().close()
        for client in self._clients:
            client.close()

    @cached_property
    def redis(self) -> redis.Redis:
        """The state store, as the app's patience says (a worker's, unless told otherwise)."""
        return self.redis_client(self._patience)

    @cached_property
    def producer_redis(self) -> RedisClient:
        """Redis as producers use it: quick to report a Redis that is down or does not answer."""
        return self.redis_client(QUICK_PATIENCE)

    @cached_property
    def fleet_time(self) -> Callable[[], float]:
        """The fleet's time, Redis's (:mod:`worker.clock`): every due time, deadline and
        retry is reckoned on it, whatever this host's clock says. Read through the producers'
        client: a Redis that does not answer leaves the last reading standing, soon."""
        return RedisClock(self.producer_redis)

    def _utc(self) -> datetime:
        return datetime.fromtimestamp(self.fleet_time(), UTC)

    @cached_property
    def producer_store(self) -> JobStore:
        return self._store(self.producer_redis)

    def _store(self, client: RedisClient) -> JobStore:
        settings = self.settings
        return JobStore(
            client, namespace=settings.namespace, ttl=settings.state_ttl, clock=self._utc
        )

    @cached_property
    def producer_scheduler(self) -> Scheduler:
        """The scheduler as producers and the command line use it (quick to report a down Redis)."""
        return self._scheduler(self.producer_store, self.producer_redis)

    @cached_property
    def scheduler(self) -> Scheduler:
        return self._scheduler(self.store, self.redis)

    def _scheduler(self, store: JobStore, client: RedisClient) -> Scheduler:
        return Scheduler(
            schedule=Schedule(client, namespace=self.settings.namespace, clock=self.fleet_time),
            reporter=self._reporter(store),
            claim_key=self.claims.key,
            grace=self.settings.start_grace,
            clock=self.fleet_time,
            limiter=self.rate_limiter,
        )

    def _reporter(self, store: JobStore) -> Reporter:
        return Reporter(store, self.publisher, self.dead_letters, self.batches, self.metrics)

    @cached_property
    def metrics(self) -> Metrics:
        """This process's metrics, with the schedule's and the job queue's sizes. Those are
        read at scrape time with :data:`SCRAPE_PATIENCE`: a scrape while Redis is down answers
        in seconds, without them, instead of after a worker's retries (past the scraper's
        timeout, which would lose every other metric too)."""
        metrics = Metrics()
        scraped = Schedule(self.redis_client(SCRAPE_PATIENCE), namespace=self.settings.namespace)
        metrics.watch(scheduled=scraped.size, pending=self.pending_jobs)
        return metrics

    def pending_jobs(self) -> int:
        """How many messages wait on the job queue (the Redis list, or the RabbitMQ queue)."""
        if is_amqp(self.settings.broker_url):
            with self.connection_for_read() as connection:
                channel: Any = connection.default_channel
                return int(channel.queue_declare(self.settings.queue, passive=True).message_count)
        return int(self.scraped_broker_redis.llen(self.settings.queue))

    @cached_property
    def scraped_broker_redis(self) -> RedisClient:
        """The Redis broker as a metrics scrape reads it (:data:`SCRAPE_PATIENCE`)."""
        return self.redis_client(SCRAPE_PATIENCE, url=self.settings.broker_url)

    @cached_property
    def broker_redis(self) -> RedisClient:
        """The Redis broker itself (which need not be the state store): its lists are the
        job queues. With the app's patience: a worker's dispatcher and fan-out publish here."""
        return self.redis_client(self._patience, url=self.settings.broker_url)

    @cached_property
    def batches(self) -> Batches:
        settings = self.settings
        return Batches(
            self.redis, namespace=settings.namespace, ttl=settings.state_ttl, clock=self.fleet_time
        )

    @cached_property
    def rate_limiter(self) -> RateLimiter:
        """The fleet-wide limit on VideoSDK calls (without RECQ_RATE_LIMIT, only 429 pauses)."""
        settings = self.settings
        return RateLimiter(self.redis, namespace=settings.namespace, rate=settings.rate_limit)

    @cached_property
    def store(self) -> JobStore:
        return self._store(self.redis)

    @cached_property
    def claims(self) -> Claims:
        settings = self.settings
        # Without a rate limit the limiter only checks for a 429's pause: the claim reads it.
        unlimited = settings.rate_limit is None
        return Claims(
            self.redis,
            namespace=settings.namespace,
            state_keys=self.store.keys,
            lease=settings.claim_lease,
            state_ttl=settings.state_ttl,
            pause_key=self.rate_limiter.pause_key if unlimited else None,
        )

    @cached_property
    def schedule(self) -> Schedule:
        return Schedule(self.redis, namespace=self.settings.namespace, clock=self.fleet_time)

    @cached_property
    def dead_letters(self) -> DeadLetters:
        return DeadLetters(self.redis, namespace=self.settings.namespace, clock=self.fleet_time)

    @property
    def broker_is_store(self) -> bool:
        """Whether the broker is the state store's Redis (the default): then a job's record and
        its message, or its state and its event, are written by one script."""
        settings = self.settings
        return settings.broker_url == settings.redis_url and not is_amqp(settings.broker_url)

    @cached_property
    def producer_enqueuer(self) -> Enqueuer:
        """How producers put jobs on the queue (through the producers' quick-to-fail client).
        A failed publish withdraws the records it had just made: the producer is told, and a
        message that got through runs without one."""
        return self._enqueuer(self.producer_store, withdraw=True)

    @cached_property
    def enqueuer(self) -> Enqueuer:
        """How the workers put jobs on the queue: a batch's children. Their records stay when
        a publish fails: they name the batch a child that got through is counted in, and the
        batch's redelivery publishes the rest."""
        return self._enqueuer(self.store, withdraw=False)

    def _enqueuer(self, store: JobStore, *, withdraw: bool) -> Enqueuer:
        if self.broker_is_store:
            return RecordAndPush(store, self.settings.queue)
        return RecordThenPublish(store, self.task_publisher.publish, withdraw=withdraw)

    @cached_property
    def task_publisher(self) -> Publisher:
        """How jobs reach the queue: pipelined LPUSHes on Redis, kombu on RabbitMQ."""
        settings = self.settings
        if is_amqp(settings.broker_url):
            return KombuPublisher(self._send)
        return RedisPublisher(self.broker_redis, settings.queue)

    def _send(self, message: TaskMessage) -> None:
        self.send_task(
            message.task,
            kwargs={"job": message.job},
            task_id=message.job_id,
            retry=True,
            retry_policy=PUBLISH_RETRY,
            # Celery puts a repr of the arguments in the message's headers, and a worker run
            # with -E copies it into its task events: not the job, which may hold a
            # pre-signed URL's signature.
            argsrepr="()",
            kwargsrepr=f"{{'job': <job {message.job_id}>}}",
        )

    def publish_delivery(self, delivery: Delivery) -> None:
        """Publish a delivery the schedule says is due, under its job's id."""
        self.task_publisher.publish([TaskMessage(delivery.task, delivery.job_id, delivery.job)])

    @cached_property
    def event_log(self) -> EventLog:
        return EventLog(self.redis, namespace=self.settings.namespace)

    @cached_property
    def publisher(self) -> Events:
        # The log first: an event a subscriber receives is then already in `recq events`.
        settings = self.settings
        if is_amqp(settings.broker_url):
            return Events([self.event_log, ExchangeSink(self.producer_or_acquire)])
        if self.broker_is_store:
            # The default: one call for the log and the exchange, on the state store's client,
            # so a job's final state write and its event share one round trip.
            return Events([RedisExchangeSink(self.redis, log=self.event_log)])
        return Events([self.event_log, RedisExchangeSink(self.broker_redis)])

    @property
    def runner(self) -> JobRunner:
        """The job runner, built once per process; it needs VideoSDK credentials."""
        with self._lock:
            if self._runner is None:
                self._runner = self._build_runner()
            return self._runner

    def _build_runner(self) -> JobRunner:
        settings = self.settings
        tokens = TokenSigner(settings.require_credentials(), ttl=settings.token_ttl)
        client = VideoSDKClient(
            build_session(settings.api_endpoint),
            endpoint=settings.api_endpoint,
            tokens=tokens,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            observe=self.metrics.observe_call,
        )
        policy = RetryPolicy(
            attempts=settings.retry_attempts, window=settings.retry_window, sleep=self._sleep
        )
        limits = Limits(
            outage_window=settings.outage_window,
            max_deliveries=settings.max_deliveries,
            requeue_delay=settings.requeue_delay,
            start_grace=settings.start_grace,
            live_poll=settings.live_poll_interval,
            max_pause=settings.max_pause,
        )
        fan_out = FanOut(batches=self.batches, enqueuer=self.enqueuer)
        return JobRunner(
            client=client,
            reporter=self._reporter(self.store),
            policy=policy,
            claims=self.claims,
            schedule=self.schedule,
            scheduler=self.scheduler,
            fan_out=fan_out,
            limiter=self.rate_limiter,
            limits=limits,
            clock=self.fleet_time,
            metrics=self.metrics,
        )


GREEN_POOLS = ("gevent", "eventlet")


def refuse_green_pool(pool: Any) -> None:
    """Raise :class:`SettingsError` for a gevent or eventlet pool, named or given as a class.

    Made to run (five fixes, docs/performance.md), the gevent pool drained jobs 1.15-1.23x as
    fast as threads, but still left a job unended after a worker was SIGKILLed (1 of 300, in
    CI), where the threads pool ends every one in the same tests.
    """
    name = pool if isinstance(pool, str) else f"{pool.__module__}.{pool.__name__}"
    for green in GREEN_POOLS:
        if green in name.lower():
            raise SettingsError(
                [
                    f"--pool {green} is not supported: recq does not run on green pools (on "
                    "gevent, a job was left unended after a worker was killed); use the threads "
                    "pool (the default), and more worker processes for more throughput (see "
                    "docs/performance.md)"
                ]
            )


def create_app(
    settings: Settings,
    *,
    sleep: Callable[[float], None] = time.sleep,
    patience: Patience = WORKER_PATIENCE,
) -> RecqCelery:
    """A configured recq Celery app, with its tasks registered. The command line's reads use
    ``patience=QUICK_PATIENCE``: a Redis that is down or hung is an error within seconds."""
    app = RecqCelery(settings, sleep=sleep, patience=patience)
    app.conf.update(celery_config(settings))
    app.conf.include = list(TASK_MODULES)
    app.steps["worker"].add(DispatcherStep)
    app.steps["consumer"].add(HeartbeatStep)
    if is_amqp(settings.broker_url):
        app.steps["consumer"].add(TopologyStep)

    def check_worker(sender: Any, **_: Any) -> None:
        if getattr(sender, "app", None) is not app:
            return
        try:
            settings.require_credentials()
            refuse_green_pool(sender.pool_cls)
            require_writable(settings.heartbeat_file)
            if settings.metrics_port:
                serve_metrics(app.metrics, settings.metrics_port, settings.metrics_address)
        except SettingsError as exc:
            # SystemExit, not an exception: Celery's signal dispatch swallows exceptions.
            print(f"recq worker: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    signals.worker_init.connect(check_worker, weak=False)
    return app


def serve_metrics(metrics: Metrics, port: int, address: str) -> None:
    """Serve ``/metrics`` on ``address``:``port`` from the worker's start: a port another
    process holds, or an address this host does not have, stops the worker, naming the
    variable, instead of leaving it to run unobserved."""
    try:
        metrics.serve(port, address)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            problem = (
                f"RECQ_METRICS_PORT={port} cannot be served ({exc.strerror}): another process "
                "holds it; each worker on a host needs a port of its own"
            )
        else:
            problem = (
                f"RECQ_METRICS_ADDRESS={address} cannot be served ({exc.strerror}): "
                "it must be an address of this host, or 0.0.0.0 for every interface"
            )
        raise SettingsError([problem]) from None
