"""Lua script calls that can share a round trip.

A :class:`ScriptCall` is one call of a registered script (redis-py's ``register_script``) with its
keys and arguments, made now (:meth:`ScriptCall.run`) or with others on the same client in one
round trip (:func:`run_together`): a job's final state write and its event, or a whole batch of
enqueued jobs' records.

:func:`run_together` sends ``EVALSHA`` itself. redis-py's scripts in a pipeline would first ask
``SCRIPT EXISTS`` in a round trip of their own, the very round trip a shared one saves; a script
Redis no longer knows (after a restart or ``SCRIPT FLUSH``) answers ``NOSCRIPT``, and only the
calls that got that answer are made again, once their script is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """One call of ``script`` on ``client``."""

    client: redis.Redis
    script: Script
    keys: Sequence[str]
    args: Sequence[str | bytes | int | float]

    def run(self) -> Any:
        """Make the call now, in a round trip of its own."""
        return self.script(keys=self.keys, args=self.args, client=self.client)


def run_together(calls: Sequence[ScriptCall]) -> list[Any]:
    """Make ``calls`` (all on one client) in one round trip, in order, each on its own (not a
    transaction): each call's answer, or the Redis error that call alone got.

    A connection that fails for good raises, as any call on the client would.
    """
    if not calls:
        return []
    client = calls[0].client
    if any(call.client is not client for call in calls):
        raise ValueError("calls made together must share one client")
    answers = _pipelined(client, calls)
    missing = [i for i, answer in enumerate(answers) if isinstance(answer, NoScriptError)]
    if missing:
        for script in {id(calls[i].script): calls[i].script for i in missing}.values():
            client.script_load(script.script)
        again = _pipelined(client, [calls[i] for i in missing])
        for index, answer in zip(missing, again, strict=True):
            answers[index] = answer
    return answers


def _pipelined(client: redis.Redis, calls: Sequence[ScriptCall]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for call in calls:
        pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
    answers: list[Any] = pipe.execute(raise_on_error=False)
    return answers


# ``keep(key, ttl)``: keep ``key`` at least ``ttl`` seconds more, never less than it was kept
# (EXPIRE's GT, which Redis 6 lacks); a key gone (TTL -2) is left alone.
KEEP_FUNCTION = """
local function keep(key, ttl)
  local left = redis.call('TTL', key)
  if left ~= -2 and left < tonumber(ttl) then
    redis.call('EXPIRE', key, ttl)
  end
end
"""
# Keep each of KEYS ARGV[1] seconds more, at least.
KEEP = (
    KEEP_FUNCTION
    + """
for _, key in ipairs(KEYS) do
  keep(key, ARGV[1])
end
"""
)


def as_text(value: bytes | str) -> str:
    """A Redis answer (bytes, from a client that does not decode) as text."""
    return value.decode(errors="replace") if isinstance(value, bytes) else value
