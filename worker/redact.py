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

# Where a URL's scheme may start: not inside a run of the characters it is made of, or right
# after an escape sequence, which glues a letter or digit to it in JSON and reprs
# ("\\nredis://", "%3Dredis://"): VideoSDK's error bodies and Celery's lines.
_ESCAPED = r"(?<=\\[nrtbfv0])|(?<=\\x[0-9a-fA-F]{2})|(?<=\\u[0-9a-fA-F]{4})|(?<=%[0-9a-fA-F]{2})"

# Three base64url segments, the first starting like a JSON object header ("eyJ" = '{"'), even
# where something is glued to its front ("tokeneyJ...", "Bearer_eyJ...", or an escape sequence:
# "\\u0022eyJ", "%3DeyJ"): what is glued (``glue``) stays, the token goes. The search starts only
# at the beginning of a run of base64url characters and reads the glue to the run's first "eyJ",
# so no run is read from more than one place.
_JWT = re.compile(
    r"(?<![A-Za-z0-9_-])(?P<glue>(?:(?!eyJ)[A-Za-z0-9_-])*+)"
    r"eyJ[A-Za-z0-9_-]{4,}+\.[A-Za-z0-9_-]{4,}+\.[A-Za-z0-9_-]{4,}+"
)
# The query string and fragment of any URL: pre-signed URLs carry their signature and
# credential there (a fragment is never sent, but a signature may be put there all the same).
# The scheme (http, https, ws, wss) in any case, anywhere; slashes may be escaped, once or more
# ("https:\/\/...": JSON allows it, and a repr of such JSON doubles the backslash). The path runs
# to the first '?', '#' or space, whatever it holds (an S3 key can be "O'Brien/rec.mp4"), and the
# rest to a space or an unescaped '"', '<' or '>'. In compact JSON a URL without a query may so
# reach into the next string with a '?': redacting too much is better than leaving a signature.
# A path stops before another scheme (that one is tried on its own), so that no stretch is
# scanned twice.
_SCHEME = r"(?i:https?|wss?):(?:\\*+/){2}"
_URL_QUERY = re.compile(
    rf"(?P<url>{_SCHEME}(?:(?!{_SCHEME})[^\s?#\\]|\\(?!{_SCHEME}).)++)"
    r"(?P<mark>[?#])(?:[^\s\"<>\\]|\\.)*+"
)
# The same, percent-encoded (a URL carried in another's query string, or logged encoded):
# "https%3A%2F%2Fhost%2Fkey%3FX-Amz-Signature%3D...", to the end of that value; its path too
# stops before another scheme.
_ENCODED_URL_QUERY = re.compile(
    r"(?P<url>(?i:(?:https?|wss?)%3A%2F%2F)"
    r"(?:(?!(?i:(?:https?|wss?)%3A))[^\s\"<>&?#%]|%(?!(?i:3F|23))[0-9A-Fa-f]{2})*+)"
    r"(?P<mark>(?i:%3F|%23))[^\s\"<>&]*+"
)

# The password of a URL's user information: "scheme://user:PASSWORD@host" (or a mistyped
# "scheme:/user:PASSWORD@host").
_URL_PASSWORD = re.compile(
    rf"(?P<user>(?:(?<![A-Za-z0-9+.-])|{_ESCAPED})"
    r"[A-Za-z][A-Za-z0-9+.-]{0,31}+:(?:\\*+/){0,2}[^\s:@/\\]{0,256}+:)"
    r"[^\s@/]{1,256}+@"
)
# The same, percent-encoded: "redis%3A%2F%2Fuser%3APASSWORD%40host".
_ENCODED_URL_PASSWORD = re.compile(
    r"(?P<user>(?<![A-Za-z0-9+.-])(?i:[A-Za-z][A-Za-z0-9+.-]{0,31}+%3A%2F%2F)"
    r"(?:[^\s:@/%]|%(?!(?i:3A|40))[0-9A-Fa-f]{2}){0,256}+(?i:%3A))"
    r"(?:[^\s@/%]|%(?!(?i:40))[0-9A-Fa-f]{2}){1,256}+(?i:%40)"
)

REDACTED = "[redacted]"
# What every secret above contains: a string without any is left as it is, unread.
_MAY_HOLD_SECRET = re.compile(r"eyJ|:|%3A", re.IGNORECASE)


# What each pattern needs to find anything: a text without it is not scanned by that pattern
# (a log line or a metadata string rarely holds any; scanning every position costs).
_URL_HINT = re.compile(r":\\*/")
_ENCODED_HINT = re.compile(r"%3[aA]%2[fF]")


def redact(text: str) -> str:
    """``text`` with tokens, URL query strings and fragments (plain or percent-encoded), and
    URL passwords replaced by ``[redacted]``."""
    if "eyJ" in text:
        text = _JWT.sub(lambda m: f"{m.group('glue')}{REDACTED}", text)
    if "@" in text:
        text = _URL_PASSWORD.sub(lambda m: f"{m.group('user')}{REDACTED}@", text)
    if _URL_HINT.search(text):
        text = _URL_QUERY.sub(lambda m: f"{m.group('url')}{m.group('mark')}{REDACTED}", text)
    if _ENCODED_HINT.search(text):
        text = _ENCODED_URL_QUERY.sub(
            lambda m: f"{m.group('url')}{m.group('mark')}{REDACTED}", text
        )
        text = _ENCODED_URL_PASSWORD.sub(lambda m: f"{m.group('user')}{REDACTED}%40", text)
    return text


def redact_values(value: Any) -> Any:
    """A JSON value with :func:`redact` applied to every string in it (keys included): what a
    job's ``metadata`` becomes in its states and events, which may quote a URL or a token."""
    if isinstance(value, str):
        return redact(value) if _MAY_HOLD_SECRET.search(value) else value
    if isinstance(value, Mapping):
        redacted: dict[Any, Any] = {}
        for key, item in value.items():
            redacted[_unique(redact_values(key), redacted)] = redact_values(item)
        return redacted
    if isinstance(value, list | tuple):
        return [redact_values(item) for item in value]
    return value


def _unique(key: Any, taken: Mapping[Any, Any]) -> Any:
    """``key``, or, when another key redacted alike is already ``taken`` (two URLs that differ
    only in their signatures), ``key`` numbered: no value is lost to the redaction."""
    if key not in taken:
        return key
    number = 2
    while f"{key} ({number})" in taken:
        number += 1
    return f"{key} ({number})"
