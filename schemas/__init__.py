"""recq's public contract: the JSON Schemas (draft 2020-12) of jobs and events, with examples.

::

    schemas/jobs/<kind>.v<N>.json            one schema per job kind and version
    schemas/jobs/common.v1.json              definitions the job schemas share, by $ref
    schemas/events/event.v1.json             the CloudEvents envelope of every event
    schemas/examples/<kind>/valid/*.json     jobs (or events) that must pass
    schemas/examples/<kind>/invalid/*.json   each breaks exactly one rule, named by the file:
                                             ``<field-path>__<code>[--<variant>].json``

The job kinds (:data:`JOB_KINDS`), each with the VideoSDK call it makes:

``start-recording``
    start recording a room, ``POST /v2/recordings/start``;
``start-track-recording``
    start recording one participant's track, ``POST /v2/recordings/participant/track/start``;
``stop-recording``
    stop a room's recording, ``POST /v2/recordings/end``;
``stop-track-recording``
    stop a track's recording, ``POST /v2/recordings/participant/track/stop``;
``bulk-track-recording``
    start recording several participants' tracks of one room at once: no call of its own, but
    one ``start-track-recording`` job per participant and kind (id
    ``<batchId>:<kind>:<participantId>``), whose progress recq tracks as a batch.

Start jobs (``bulk-track-recording`` among them) take the scheduling fields ``startAt``,
``stopAt`` and ``startDeadline``; stop jobs take ``stopAt`` only. recq makes a stop job itself
(id ``<jobId>:stop``) for a start job that has a ``stopAt``, once the start has succeeded; a
bulk job's children carry its ``stopAt``, so each child gets its own stop job. A stop VideoSDK
refuses because nothing is running (code 4012) or the meeting has no live session any more
(4003) succeeds, as ``reconciled``.

Every schema is identified by its ``$id`` (``urn:recq:schema:jobs:start-recording:v1``); a
``$ref`` between schemas names that ``$id``, never a file, so the files can be served anywhere.
The files ship in the wheel and are read through :mod:`importlib.resources`.
"""

from __future__ import annotations

import json
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any, Literal

JOB_KINDS = (
    "start-recording",
    "start-track-recording",
    "stop-recording",
    "stop-track-recording",
    "bulk-track-recording",
)
"""The job kinds, each the name of a schema ``jobs/<kind>.v1.json`` and of an examples folder."""

_ROOT = files(__name__)
_SCHEMA_FOLDERS = ("jobs", "events")


def _parse(resource: Traversable) -> object:
    return json.loads(resource.read_text(encoding="utf-8"))


def load(relative_path: str) -> dict[str, Any]:
    """The parsed JSON document at ``relative_path`` under ``schemas/``, such as
    ``"jobs/start-recording.v1.json"``."""
    document = _parse(_ROOT.joinpath(*relative_path.split("/")))
    if not isinstance(document, dict):
        raise TypeError(f"schemas/{relative_path} is not a JSON object")
    return document


def all_schemas() -> dict[str, dict[str, Any]]:
    """Every schema under ``jobs/`` and ``events/``, keyed by its ``$id``."""
    found: dict[str, dict[str, Any]] = {}
    for folder in _SCHEMA_FOLDERS:
        for resource in sorted(_ROOT.joinpath(folder).iterdir(), key=lambda r: r.name):
            if resource.name.endswith(".json"):
                schema = load(f"{folder}/{resource.name}")
                found[schema["$id"]] = schema
    return found


def examples(kind: str, validity: Literal["valid", "invalid"]) -> list[tuple[str, Any]]:
    """The examples of ``kind`` (a job kind, or ``"events"``) as (file stem, parsed JSON),
    sorted by name. A kind without examples raises :class:`KeyError`."""
    folder = _ROOT.joinpath("examples", kind, validity)
    if not folder.is_dir():
        raise KeyError(f"no {validity} examples for {kind!r} (no folder schemas/examples/{kind})")
    return [
        (resource.name.removesuffix(".json"), _parse(resource))
        for resource in sorted(folder.iterdir(), key=lambda r: r.name)
        if resource.name.endswith(".json")
    ]
