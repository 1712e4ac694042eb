"""Keeping secrets out of text that leaves the process: logs, events, job states, errors.

What counts as secret here: JWTs (our tokens and any echoed back), the signature part of a
pre-signed URL (its query string), and the password in a URL (a broker's or Redis's,
``amqp://user:password@host``). The account secret itself never reaches text that is
redacted, because it is only ever held in a :class:`worker.settings.Secret`.
"""

from __future__ import annotations

import re

# Three base64url segments, the first starting like a JSON object header ("eyJ" = '{"').
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}")
# The query string of any URL: pre-signed URLs carry their signature and credential there.
# Slashes may be escaped ("https:\/\/...": JSON allows it, and some encoders do it).
_URL_QUERY = re.compile(r"(?P<url>\bhttps?:(?:\\?/){2}[^\s?\"'<>]+)\?[^\s\"'<>]*")

# The password of a URL's user information: "scheme://user:PASSWORD@host" (or a mistyped
# "scheme:/user:PASSWORD@host").
_URL_PASSWORD = re.compile(r"(?P<user>\b[A-Za-z][A-Za-z0-9+.-]*:/{0,2}[^\s:@/]*:)[^\s@/]+@")

REDACTED = "[redacted]"


def redact(text: str) -> str:
    """``text`` with tokens, URL query strings and URL passwords replaced by ``[redacted]``."""
    text = _JWT.sub(REDACTED, text)
    text = _URL_PASSWORD.sub(lambda m: f"{m.group('user')}{REDACTED}@", text)
    return _URL_QUERY.sub(lambda m: f"{m.group('url')}?{REDACTED}", text)
