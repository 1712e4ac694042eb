"""The request bodies VideoSDK documents, checked strictly.

Strict on purpose: an unknown field is refused by name, so a client that leaks its own envelope
(``jobId``, ``metadata``, ``startAt``...) into a VideoSDK request fails in tests, not in
production. Messages name the dotted path of the field, e.g. ``"config.layout.gridSize"``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Collection, Mapping
from typing import Any
from urllib.parse import urlsplit

# A check takes a value and its dotted path, and returns what is wrong with it, or None.
Check = Callable[[Any, str], str | None]

KINDS = ("audio", "video", "screen_audio", "screen_video")


def text(value: Any, where: str) -> str | None:
    """A non-empty string."""
    if isinstance(value, str) and value:
        return None
    return f'"{where}" must be a non-empty string'


def flag(value: Any, where: str) -> str | None:
    """A boolean."""
    return None if isinstance(value, bool) else f'"{where}" must be a boolean'


def choice(*options: str) -> Check:
    """One of ``options``."""

    def check(value: Any, where: str) -> str | None:
        if isinstance(value, str) and value in options:
            return None
        return f'"{where}" must be one of [{", ".join(options)}]'

    return check


def whole_number(low: int, high: int) -> Check:
    """A whole number from ``low`` to ``high``: ``2`` or ``2.0``, which JSON (and JSON Schema's
    ``integer``) do not tell apart; a boolean is not a number."""

    def check(value: Any, where: str) -> str | None:
        whole = type(value) is int or (type(value) is float and value.is_integer())
        if whole and low <= value <= high:
            return None
        return f'"{where}" must be an integer from {low} to {high}'

    return check


def web_url(value: Any, where: str) -> str | None:
    """An absolute http(s) URL."""
    problem = text(value, where)
    if problem:
        return problem
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f'"{where}" must be an absolute http(s) URL'
    return None


def public_https_url(value: Any, where: str) -> str | None:
    """An https URL the service could reach: not localhost nor a loopback address."""
    problem = web_url(value, where)
    if problem:
        return problem
    host = urlsplit(value).hostname or ""
    if urlsplit(value).scheme != "https" or _is_local(host):
        return f'"{where}" must be an https URL reachable from VideoSDK (not localhost)'
    return None


def _is_local(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def obj(fields: Mapping[str, Check], required: Collection[str] = ()) -> Check:
    """A JSON object with only ``fields`` (each checked), ``required`` ones present."""

    def check(value: Any, where: str) -> str | None:
        if not isinstance(value, dict):
            return f'"{where}" must be an object' if where else "the body must be a JSON object"
        for name in value:
            if name not in fields:
                return f'"{_join(where, name)}" is not allowed'
        for name in required:
            if name not in value:
                return f'"{_join(where, name)}" is required'
        for name, item in value.items():
            problem = fields[name](item, _join(where, name))
            if problem:
                return problem
        return None

    return check


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


LAYOUT = obj(
    {
        "type": choice("GRID", "SPOTLIGHT", "SIDEBAR"),
        "priority": choice("SPEAKER", "PIN"),
        "gridSize": whole_number(1, 4),
    }
)
CONFIG = obj(
    {
        "layout": LAYOUT,
        "theme": choice("DARK", "LIGHT", "DEFAULT"),
        "mode": choice("video-and-audio", "audio"),
        "quality": choice("low", "med", "high"),
        "orientation": choice("portrait", "landscape"),
    }
)
TRANSCRIPTION = obj({"enabled": flag, "summary": obj({"enabled": flag, "prompt": text})})

START_RECORDING = obj(
    {
        "roomId": text,
        "templateUrl": public_https_url,
        "transcription": TRANSCRIPTION,
        "config": CONFIG,
        "webhookUrl": web_url,
        "awsDirPath": text,
        "preSignedUrl": web_url,
    },
    required=("roomId",),
)
# The official Node server SDK also sends the room's "id" on a stop: accepted, as the real
# service must accept what its own SDK sends.
END_RECORDING = obj({"roomId": text, "id": text}, required=("roomId",))
START_TRACK = obj(
    {
        "roomId": text,
        "participantId": text,
        "kind": choice(*KINDS),
        "fileFormat": choice("webm"),
        "webhookUrl": web_url,
        "bucketDirPath": text,
    },
    required=("roomId", "participantId", "kind"),
)
STOP_TRACK = obj(
    {"roomId": text, "participantId": text, "kind": choice(*KINDS)},
    required=("roomId", "participantId", "kind"),
)
