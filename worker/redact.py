"""Keeping secrets out of text that leaves the process: logs, events, job states, errors.

What counts as secret here: JWTs (our tokens and any echoed back), and the signature part of a
pre-signed URL (its query string). The account secret itself never reaches text that is
redacted, because it is only ever held in a :class:`worker.settings.Secret`.
"""

from __future__ import annotations

import re

# Three base64url segments, the first starting like a JSON object header ("eyJ" = '{"').
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}")
# The query string of any URL: pre-signed URLs carry their signature and credential there.
_URL_QUERY = re.compile(r"(?P<url>\bhttps?://[^\s?\"'<>]+)\?[^\s\"'<>]*")

REDACTED = "[redacted]"


def redact(text: str) -> str:
    """``text`` with tokens and URL query strings replaced by ``[redacted]``."""
    text = _JWT.sub(REDACTED, text)
    return _URL_QUERY.sub(lambda m: f"{m.group('url')}?{REDACTED}", text)
