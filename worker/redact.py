"""Keeping secrets out of text that leaves the process: logs, events, job states, errors.

What counts as secret here: JWTs (our tokens and any echoed back), the signature part of a
pre-signed URL (its query string), and the password in a URL (a broker's or Redis's,
``amqp://user:password@host``). The account secret itself never reaches text that is
redacted, because it is only ever held in a :class:`worker.settings.Secret`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# Every pattern here must take time linear in the text, whatever the text: they run on log lines
# and on a job's metadata strings (up to 64 KB), where a pattern that rescans the rest of the
# text from each of many starting points would hold a worker for minutes. So each starts only
# at the beginning of a run (a lookbehind) or stops where the next try starts, its repeats are
# possessive (no backtracking), and those that may fail after a long run are bounded.

# Three base64url segments, the first starting like a JSON object header ("eyJ" = '{"').
_JWT = re.compile(
    r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{4,}+\.[A-Za-z0-9_-]{4,}+\.[A-Za-z0-9_-]{4,}+"
)
# The query string of any URL: pre-signed URLs carry their signature and credential there.
# The scheme in any case; slashes may be escaped, once or more ("https:\/\/...": JSON allows
# it, and a repr of such JSON doubles the backslash). The path runs to the first '?' or space,
# whatever it holds (an S3 key can be "O'Brien/rec.mp4"), and the query to a space or an
# unescaped '"', '<' or '>'. In compact JSON a URL without a query may so reach into the next
# string with a '?': redacting too much is better than leaving a signature. A path stops before
# another "http(s)://" (that one is tried on its own), so that no stretch is scanned twice.
_URL_QUERY = re.compile(
    r"(?P<url>\b(?i:https?):(?:\\*+/){2}(?:(?!(?i:https?):(?:\\*/){2})[^\s?\\]|\\.)++)"
    r"\?(?:[^\s\"<>\\]|\\.)*+"
)

# The password of a URL's user information: "scheme://user:PASSWORD@host" (or a mistyped
# "scheme:/user:PASSWORD@host").
_URL_PASSWORD = re.compile(
    r"(?P<user>(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]{0,31}+:/{0,2}[^\s:@/]{0,256}+:)"
    r"[^\s@/]{1,256}+@"
)

REDACTED = "[redacted]"
# What every secret above contains: a string without either is left as it is, unread.
_MAY_HOLD_SECRET = re.compile(r"eyJ|:")


def redact(text: str) -> str:
    """``text`` with tokens, URL query strings and URL passwords replaced by ``[redacted]``."""
    text = _JWT.sub(REDACTED, text)
    text = _URL_PASSWORD.sub(lambda m: f"{m.group('user')}{REDACTED}@", text)
    return _URL_QUERY.sub(lambda m: f"{m.group('url')}?{REDACTED}", text)


def redact_values(value: Any) -> Any:
    """A JSON value with :func:`redact` applied to every string in it (keys included): what a
    job's ``metadata`` becomes in its states and events, which may quote a URL or a token."""
    if isinstance(value, str):
        return redact(value) if _MAY_HOLD_SECRET.search(value) else value
    if isinstance(value, Mapping):
        return {redact_values(k): redact_values(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_values(item) for item in value]
    return value
