"""recq's Redis transport: kombu's, with one synchronous client per channel."""

from __future__ import annotations

import pytest
import redis

from worker.transport import Channel


class TestRedisChannel:
    def test_the_app_uses_it_for_a_redis_broker(self, app):
        """A Redis broker's channels are recq's, not kombu's own."""
        with app.connection_for_write() as connection:
            assert isinstance(connection.default_channel, Channel)

    def test_synchronous_commands_share_one_client(self, app):
        """Two synchronous clients asked of a channel are the same object, and it works."""
        with app.connection_for_write() as connection:
            channel = connection.default_channel
            first, second = channel._create_client(), channel._create_client()
            assert first is second
            assert first.ping()

    def test_a_reset_pool_gets_a_new_client(self, app):
        """After kombu drops the channel's pool (a reconnection), a fresh client is made."""
        with app.connection_for_write() as connection:
            channel = connection.default_channel
            before = channel._create_client()
            channel._disconnect_pools()
            after = channel._create_client()
            assert after is not before
            assert after.ping()

    def test_a_channel_closing_after_a_lost_connection_raises_a_connection_error(self, app):
        """Asked for a client once its pool and connection are gone (kombu's restore while
        closing), it raises a Redis ConnectionError, which Celery's reconnection handles, not
        the AttributeError that stopped the worker consuming."""
        with app.connection_for_write() as connection:
            channel = connection.default_channel
            channel._disconnect_pools()
            transport = channel.connection
            client, transport.client = transport.client, None
            try:
                with pytest.raises(redis.ConnectionError):
                    channel._create_client()
            finally:
                transport.client = client
