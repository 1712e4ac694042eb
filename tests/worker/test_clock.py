"""The fleet's clock: Redis's time, whatever each host's clock says."""

from __future__ import annotations

import logging
import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from worker.clock import RETRY, RedisClock
from worker.redis_server import free_port, throwaway_redis


class Host:
    """A host's clocks: its wall clock off from the true time by ``skew`` seconds, and its
    monotonic clock (from an origin of its own) moved on by hand, to come to the next read."""

    def __init__(self, skew: float) -> None:
        self.skew = skew
        self.moved = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + 1_000_000 + self.moved

    def time(self) -> float:
        return time.time() + self.skew


def redis_now(client: redis.Redis) -> float:
    seconds, microseconds = client.time()
    return seconds + microseconds / 1e6


def times_read(sends: list[bytes]) -> int:
    """How many times Redis's time was read (a new connection's handshake aside)."""
    return sends.count(b"TIME")


def a_clock(client: redis.Redis, host: Host) -> RedisClock:
    return RedisClock(client, monotonic=host.monotonic, host=host.time)


class TestRedisTime:
    def test_a_host_ten_minutes_behind_reads_redis_s_time(self, redis_client):
        """Every process reckons due times and deadlines on this clock: a host's own would
        start scheduled recordings as early or late as the host is off."""
        host = Host(skew=-600)
        clock = a_clock(redis_client, host)
        before = redis_now(redis_client)
        now = clock()
        after = redis_now(redis_client)
        assert before - 0.05 <= now <= after + 0.05
        assert abs(clock.skew + 600) < 0.05

    def test_redis_is_read_once_a_minute_not_on_every_call(self, redis_client, sends):
        host = Host(skew=30)
        clock = a_clock(redis_client, host)
        clock()
        assert times_read(sends) == 1
        for _ in range(100):
            clock()
        assert times_read(sends) == 1
        host.moved = 61  # a minute later
        clock()
        assert times_read(sends) == 2

    def test_a_host_clock_off_by_more_than_a_second_is_logged_once(self, redis_client, caplog):
        host = Host(skew=-90)
        clock = a_clock(redis_client, host)
        with caplog.at_level(logging.WARNING, logger="worker.clock"):
            clock()
            host.moved = 61
            clock()
        [record] = [r for r in caplog.records if r.name == "worker.clock"]
        assert "this host's clock is 90.0 s behind Redis's" in record.getMessage()


class TestRedisUnreadable:
    def test_until_redis_answers_the_host_s_clock_stands_in(self):
        host = Host(skew=42)
        with redis.Redis(port=free_port(), socket_connect_timeout=0.5) as nowhere:
            clock = a_clock(nowhere, host)
            assert abs(clock() - host.time()) < 0.05
            assert clock.skew is None

    def test_a_redis_gone_since_leaves_the_last_reading_and_is_tried_again_later(self, sends):
        host = Host(skew=-600)
        with (
            throwaway_redis() as server,
            redis.Redis.from_url(server.url, retry=Retry(NoBackoff(), 0)) as client,
        ):
            clock = a_clock(client, host)
            clock()
            server.stop()
            host.moved = 61  # due to read again: Redis is gone
            # On Redis's time still (this test's Redis runs on this host), not the host's:
            assert abs(clock() - (time.time() + 61)) < 0.05
            server.start()
            sends.clear()
            host.moved = 61 + RETRY / 2
            clock()
            assert times_read(sends) == 0  # not tried again yet
            host.moved = 61 + RETRY
            assert abs(clock() - redis_now(client)) < 0.05
            assert times_read(sends) == 2  # the clock's, then the test's
