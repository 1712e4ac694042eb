"""A fleet-wide rate limit on VideoSDK calls, shared by every worker through Redis.

``RECQ_RATE_LIMIT=5/s`` means: no more than 5 calls *start* in any one-second window, counting
every thread of every worker together. Celery's own ``rate_limit`` is per worker instance, so it
cannot say that; nor can a bucket per process, whose sum grows with the fleet.

The algorithm is a **sliding-window log** with a **waiting line**, one Lua script, atomic in Redis:

1. tickets whose holders are overdue by more than ``patience`` leave the line (see below), and the
   log, a sorted set of the calls granted scored by when, loses the entries older than the window;
2. a caller's *position* is its ticket's rank in the line, or the line's length for a newcomer or
   a caller without a ticket; *free* is ``count`` less the grants in the window;
3. with no pause in force and ``position < free`` the call is granted, logged under a member of its
   own, and its ticket leaves the line; otherwise the answer is "come back in so long", and a
   ticket takes (or keeps) its place in the line and is expected back then.

A grant is made only while the window ending at that moment holds fewer than ``count`` grants, so
no window ever holds more than ``count``, wherever it starts. A token bucket or GCRA cannot
promise that: a full bucket grants a burst at the end of one window and refills into the next.

**The margin.** The window is ``period + margin`` long, not ``period``: a call reaches VideoSDK a
few milliseconds after its grant, and not always the same few, so calls granted exactly one period
apart can arrive less than one period apart. With a margin larger than that jitter, no window of
``period`` seen by VideoSDK holds more than ``count``. The cost is throughput: ``count`` calls per
``period + margin``, about 5% below the nominal rate at 5/s with the default 50 ms.

**The line** makes refusals fair (first come, first served) and spreads the waiters out. Without
it, every refused job is told the same wait (until the oldest grant leaves the window); 1,000 jobs
deferred under 5/s come back together, 5 win and 995 are deferred again, round after round. With
it, the caller who passes a ticket (its job id, stable across re-deliveries) keeps the place it
first took, and is told when *its own* turn comes, so most come back once and are granted. The
turn is worked out in :data:`_TRY`. A waiter that does not come back (its job was cancelled, or its
worker died) keeps a slot from the others only until ``patience`` seconds past the time it was
expected; :meth:`RateLimiter.leave` drops it at once.

**Pairs.** A scheduled start makes two calls in a row, its meeting check and then its start, and
takes one turn for both: the check's grant keeps a second slot for the start (logged as
``kept:<ticket>``), or, at one call a period, keeps the ticket at the head of the line. The start
is sent only once the check is answered, so its slot is logged again when it goes: had it stayed
logged at the check's grant, a check slower than the margin would let the fleet put one call too
many in a period. Moving a slot that is still in the window is always allowed (every window
ending at that moment counts it already), so a start whose check took less than a window never
waits behind calls granted meanwhile.

Time is Redis's own (``TIME`` inside the script), so the workers' clocks need not agree. Redis
5 or later is needed to write after reading ``TIME`` in a script.

A **pause** slows the whole fleet when VideoSDK answers 429: :meth:`RateLimiter.pause` sets a key
that every limiter checks. It is only ever extended, never shortened, so a short ``Retry-After``
seen by one worker cannot cut a longer one seen by another. Nothing is granted while it lasts;
waiters are told their turns counted from its end, so they do not all come back at that moment.

Layout for namespace ``recq``:

- ``recq:ratelimit:log`` the sorted set of grants (member unique, or ``kept:<ticket>`` for a
  slot kept for a pair's second call; score in microseconds of Redis time); it expires one
  window after the last grant, so an idle limiter leaves nothing behind;
- ``recq:ratelimit:pause`` present while a pause is in force; its value is the resume time (epoch
  milliseconds of Redis time) and its expiry is that same moment;
- ``recq:ratelimit:line`` the sorted set of waiting tickets, scored by when each first queued;
- ``recq:ratelimit:back`` the same tickets, scored by when each is expected back (microseconds);
  both expire ``patience`` after the latest of those times.

Every worker must be configured with the same rate and margin: the log is shared, and a worker
with a shorter window trims entries that a worker with a longer one still counts.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from worker.errors import SettingsError

# KEYS: log, pause, line, back. ARGV: count, window, member, ticket ('' for none), patience, log
# expiry in ms, slots (how many calls the grant is for, at most count: a pair is granted when the
# caller's turn has two free slots, as if it stood one place further back), mode ('' for one call,
# 'pair' for the first call of a pair, 'second' for the second). Times and waits are in
# microseconds. An unlimited limiter passes count 0: only the pause applies.
_TRY = """
local count = tonumber(ARGV[1])
local paused = math.max(redis.call('PTTL', KEYS[2]), 0) * 1000
if count == 0 then
  return paused
end
local window, ticket, patience = tonumber(ARGV[2]), ARGV[4], tonumber(ARGV[5])
local mode, kept = ARGV[8], 'kept:' .. ARGV[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function keep_line()
  local latest = redis.call('ZRANGE', KEYS[4], -1, -1, 'WITHSCORES')
  local expiry = math.ceil((tonumber(latest[2]) + patience - now) / 1000)
  redis.call('PEXPIRE', KEYS[3], expiry)
  redis.call('PEXPIRE', KEYS[4], expiry)
end
local function leave_line()
  redis.call('ZREM', KEYS[3], ticket)
  redis.call('ZREM', KEYS[4], ticket)
end
local overdue = string.format('(%d', now - patience)
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', overdue)) do
  redis.call('ZREM', KEYS[3], gone)
  redis.call('ZREM', KEYS[4], gone)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
-- The second call of a pair: the slot kept for it at the first call's grant is logged again
-- now, as the call goes. While that slot is still in the window it is always free to move: the
-- window ending now counts it already. A slot that has left the window, or a pause, sends the
-- call to ask like any other, from the head of the line.
if mode == 'second' and redis.call('ZREM', KEYS[1], kept) == 1 then
  if paused == 0 then
    redis.call('ZADD', KEYS[1], now, ARGV[3])
    redis.call('PEXPIRE', KEYS[1], ARGV[6])
    leave_line()
    return 0
  end
  redis.call('ZADD', KEYS[3], 0, ticket)
end
-- Everything is counted from the first moment a call may start: now, or the end of a pause.
local start = now + paused
local since = string.format('(%d', start - window)
local held = redis.call('ZCOUNT', KEYS[1], since, '+inf')
local free = math.max(count - held, 0)
local rank = ticket ~= '' and redis.call('ZRANK', KEYS[3], ticket)
local slots = tonumber(ARGV[7])
local position = (rank or redis.call('ZCARD', KEYS[3])) + slots - 1
if position < free and paused == 0 then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  if slots == 2 then
    redis.call('ZADD', KEYS[1], now, kept)
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
  if mode == 'pair' and slots == 1 then
    -- At one call a period the second call has no slot in this window: its ticket waits at
    -- the head of the line, expected back when this grant leaves the window.
    redis.call('ZADD', KEYS[3], 0, ticket)
    redis.call('ZADD', KEYS[4], now + window, ticket)
    keep_line()
  elseif rank then
    leave_line()
  end
  return 0
end
-- In a pause, a caller with a slot free at its end is told to come back then.
local wait = paused
if position >= free then
  -- The caller's turn. The first `free` in line take the free slots at `start`; the caller is k
  -- places behind them. Slot j comes free when the j-th oldest grant in the window leaves it (the
  -- free slots count as taken at `start`), and again one window after each grant made in it. The
  -- waiters are also kept `step` apart, so that a burst of grants is not answered a window later
  -- by a burst of returns. turn(k) = max(slot k comes free, turn(k - 1) + step) unrolls to
  --   turn(k) = window + k * step + max over j <= min(k, count - 1) of (slot[j] - j * step):
  -- the earliest time at which the caller's slot is free, when every waiter ahead comes back at
  -- its own turn and is granted then. So each waiter is told its own time, not the same as all.
  -- It reads at most `count` grants, only when refusing.
  local k = position - free
  local step = window / count
  local last = math.min(k, count - 1)
  local grants = redis.call('ZRANGEBYSCORE', KEYS[1], since, '+inf', 'WITHSCORES',
    'LIMIT', math.max(held - count, 0), last + 1)
  local base = -math.huge
  for j = 0, last do
    local slot = grants[2 * j + 2] and tonumber(grants[2 * j + 2]) or start
    base = math.max(base, slot - j * step)
  end
  wait = math.ceil(base + window + k * step - now)
end
-- A refused ticket keeps the place it first took and is expected back when told, during a pause
-- too, so that a long pause does not make the whole line overdue.
if ticket ~= '' then
  redis.call('ZADD', KEYS[3], 'NX', now, ticket)
  redis.call('ZADD', KEYS[4], now + wait, ticket)
  keep_line()
end
return wait
"""

_PAUSE = """
local ms = tonumber(ARGV[1])
if ms > 0 and redis.call('PTTL', KEYS[1]) < ms then
  local t = redis.call('TIME')
  local resume = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + ms
  redis.call('SET', KEYS[1], string.format('%d', resume), 'PX', ms)
end
return math.max(redis.call('PTTL', KEYS[1]), 0)
"""

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(
    r"(?P<count>\d+)\s*/\s*(?P<multiple>\d+(?:\.\d+)?)?\s*"
    r"(?P<unit>s|sec|second|seconds|m|min|minute|minutes|h|hour|hours)",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class Rate:
    """At most ``count`` calls in any window of ``period`` seconds."""

    count: int
    period: float

    def __post_init__(self) -> None:
        if self.count < 1 or self.period <= 0:
            raise ValueError(f"a rate needs a positive count and period, not {self!r}")

    def __str__(self) -> str:
        for unit, seconds in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
            multiple = self.period / seconds
            if multiple == 1:
                return f"{self.count}/{unit}"
            if multiple.is_integer() and unit != "s":
                return f"{self.count}/{multiple:g}{unit}"
        return f"{self.count}/{self.period:g}s"


MAX_STEP_WAIT = 2.0
"""The longest extra wait, in seconds, of a start for the slot after its check's, at one call a
period: a delivery must stay well within its claim's lease."""


def parse_rate(text: str) -> Rate:
    """Read ``RECQ_RATE_LIMIT``: calls per second, minute or hour, e.g. ``5/s``, ``300/m``.

    A multiple of the unit is allowed (``10/30s``, ``5/0.5s``), and so are the long unit names
    (``5/second``). Anything else raises :class:`SettingsError`.
    """
    match = _RATE.fullmatch(text.strip())
    if match:
        count = int(match["count"])
        period = float(match["multiple"] or 1) * _UNITS[match["unit"][0].lower()]
        if count == 1 and period > MAX_STEP_WAIT:
            # Its check's slot, then its start's a period later: too long a wait for one
            # delivery, so the start went back on the schedule, checked again, and never ran.
            raise SettingsError(
                [
                    f"RECQ_RATE_LIMIT={text!r} allows one call a period longer than "
                    f"{MAX_STEP_WAIT:g} s: a scheduled start makes two calls in a row (its "
                    "meeting check, then the start), and the start cannot wait a whole period "
                    "for the next slot; allow at least two calls a period: "
                    f"RECQ_RATE_LIMIT={Rate(2, 2 * period)} keeps the same average rate but "
                    f"lets two calls go together, RECQ_RATE_LIMIT={Rate(2, period)} doubles it"
                ]
            )
        if count >= 1 and period > 0:
            return Rate(count, period)
    raise SettingsError(
        [
            f"RECQ_RATE_LIMIT={text!r} is not a rate: give a positive number of calls per second, "
            "minute or hour, e.g. RECQ_RATE_LIMIT=5/s or RECQ_RATE_LIMIT=300/m"
        ]
    )


class RateLimiter:
    """Grants VideoSDK calls within one rate, shared by every worker on the same Redis.

    The window is ``rate.period + margin`` seconds (see the module's docstring for why). Callers
    that pass a ticket wait in line, first come first served; a ticket overdue by more than
    ``patience`` seconds loses its place. With ``rate=None`` every call is granted and no log or
    line is kept; a pause still applies.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        namespace: str,
        rate: Rate | None,
        margin: float = 0.05,
        patience: float = 5.0,
    ) -> None:
        if margin < 0 or patience <= 0:
            raise ValueError(f"margin must be >= 0 and patience > 0, not {margin!r}, {patience!r}")
        self.rate = rate
        prefix = f"{namespace}:ratelimit"
        self._keys = tuple(f"{prefix}:{name}" for name in ("log", "pause", "line", "back"))
        if rate is None:
            self._args: tuple[int, ...] = (0, 0, 0, 0)
        else:
            window_us = max(round((rate.period + margin) * 1_000_000), 1)
            patience_us = max(round(patience * 1_000_000), 1)
            self._args = (rate.count, window_us, patience_us, math.ceil(window_us / 1000))
        self._client = client
        self._try: Any = client.register_script(_TRY)
        self._pause: Any = client.register_script(_PAUSE)

    @property
    def pause_key(self) -> str:
        """The key present while a 429's pause is in force (its expiry is the pause's end)."""
        return self._keys[1]

    @property
    def pairs(self) -> bool:
        """Whether two calls can be granted at once (the rate allows 2 or more a period)."""
        return self._args[0] >= 2  # noqa: PLR2004 - a pair

    @property
    def step(self) -> float:
        """The seconds between two grants at the full rate (0 without a rate)."""
        count, window_us, _, _ = self._args
        return window_us / count / 1_000_000 if count else 0.0

    def try_acquire(
        self, ticket: str | None = None, *, pair: bool = False, second: bool = False
    ) -> float:
        """Take a slot if it is this caller's turn: 0.0 when granted, else seconds to wait (> 0).

        With a ticket (the job's id, the same on every re-delivery) a refused caller takes its
        place in the line, or keeps the one it has, and the wait is until its own turn. Without
        one the caller is refused whenever anyone is waiting, and told when a newcomer's turn is.

        ``pair`` and ``second`` are for two calls made one after the other by the same ticket,
        such as a scheduled start's meeting check and its start: one turn for both. The first
        call asks with ``pair``: with :attr:`pairs` its grant keeps a second slot for the
        ticket, else (one call a period) it keeps the ticket at the head of the line. The second
        call asks with ``second``, as it goes: the slot kept is logged anew at that moment
        (VideoSDK sees the call then, not at the first grant), or the ticket is granted the next
        free slot before anyone else. :meth:`leave` gives up what was kept when the second call
        will not be made.
        """
        if (pair or second) and not ticket:
            raise ValueError("two calls in a row are granted to a ticket, and none was given")
        if pair and second:
            raise ValueError("a call is either the first of a pair or the second, not both")
        count, window_us, patience_us, expiry_ms = self._args
        member = uuid.uuid4().hex
        slots = 2 if pair and self.pairs else 1
        mode = "pair" if pair else "second" if second else ""
        args = [count, window_us, member, ticket or "", patience_us, expiry_ms, slots, mode]
        wait_us = self._try(keys=self._keys, args=args)
        return int(wait_us) / 1_000_000

    def acquire(
        self,
        max_wait: float,
        sleep: Callable[[float], None] = time.sleep,
        ticket: str | None = None,
        *,
        pair: bool = False,
        second: bool = False,
    ) -> float:
        """Take a slot, sleeping the advised waits while their total stays within ``max_wait``.

        Returns 0.0 once granted. When the next wait would take the total past ``max_wait`` it is
        returned unslept, so the caller can re-queue the job rather than hold a thread; the ticket
        keeps its place in the line until the job comes back.
        """
        waited = 0.0
        while wait := self.try_acquire(ticket, pair=pair, second=second):
            if waited + wait > max_wait:
                return wait
            sleep(wait)
            waited += wait
        return 0.0

    def leave(self, *tickets: str) -> int:
        """Give up the tickets' places in line, and the slots kept for their second calls (their
        jobs will not come back, or will not make that call), in one round trip. Returns how
        many places and kept slots were given up."""
        if not tickets:
            return 0
        with self._client.pipeline(transaction=True) as pipe:
            pipe.zrem(self._keys[2], *tickets)
            pipe.zrem(self._keys[3], *tickets)
            pipe.zrem(self._keys[0], *(f"kept:{ticket}" for ticket in tickets))
            waiting, _, kept = pipe.execute()
        return int(waiting) + int(kept)

    def pause(self, seconds: float) -> float:
        """Stop every worker's calls for ``seconds`` (after a 429), unless a longer pause runs.

        Returns the seconds the pause in force has left.
        """
        ms = math.ceil(seconds * 1000)
        remaining_ms = self._pause(keys=self._keys[1:2], args=[ms])
        return int(remaining_ms) / 1000
