"""Checking a job against its published schema, with messages a person can act on.

A job is checked in order: its size as JSON (:data:`MAX_JOB_BYTES`), that it is a JSON object,
then its schema, ``schemas/jobs/<kind>.v1.json``. Every violation is reported at once, sorted by
field path, as a :class:`~worker.errors.Violation`: the dotted path (``config.layout.gridSize``,
``""`` for the whole job), a stable code and a sentence. The codes:

``too-large``, ``not-json``, ``type``, ``required``, ``unknown-field``, ``enum``, ``const``,
``minimum``, ``maximum``, ``minLength``, ``maxLength``, ``maxProperties``, ``minItems``,
``maxItems``, ``uniqueItems``, ``pattern``, ``not``,
``date-time``, ``after``; any other schema keyword reports under its own name.

The last two are rules the schemas cannot state (JSON Schema neither compares two fields nor, in
most validators, asserts ``format``): a time must be a real date (not 30 February); ``stopAt``
must be after ``startAt``, and so must ``startDeadline``. Validators in other
languages accept such a job; recq refuses it (see :data:`RECQ_ONLY_CODES`).

A field that breaks several rules reports only the most basic one (see ``_PRECEDENCE``): a number
given for an enum is a ``type`` problem, an empty id a ``minLength`` one.

The producer validates before publishing and the worker again before calling VideoSDK, so this
runs on every job: the schemas are loaded, and their validators built, once per process, and
``$ref`` resolves only within recq's own schemas, never over the network. It resolves once, when
the validator is built: each ``$ref`` is replaced by the schema it points to (see
:func:`_inlined`), which makes a job's check about three times as fast as looking the reference
up on every job.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any

from jsonschema import Draft202012Validator, ValidationError
from referencing import Registry
from referencing.jsonschema import DRAFT202012

import schemas
from worker.errors import InvalidJob, Violation
from worker.redact import redact
from worker.timing import parse_time

ENVELOPE_FIELDS = frozenset({"jobId", "metadata", "startAt", "stopAt", "startDeadline"})
"""recq's own job fields; every other field is VideoSDK's and is sent to it unchanged."""

MAX_JOB_BYTES = 64 * 1024
"""The largest job accepted, measured as compact UTF-8 JSON."""

MAX_BULK_JOB_BYTES = 320 * 1024
"""The largest bulk job: 1,000 participant ids can be long."""

_MAX_BYTES = {"bulk-track-recording": MAX_BULK_JOB_BYTES}

TIME_FIELDS = ("startAt", "stopAt", "startDeadline")

RECQ_ONLY_CODES = frozenset({"after", "date-time"})
"""Codes of the rules recq checks beyond what a plain schema validator does."""

_PRECEDENCE = ("type", "const", "enum", "minLength", "maxLength", "minimum", "maximum", "pattern")
_SHOWN_CHARS = 60
_TYPE_NAMES = {
    "object": "an object",
    "array": "an array",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean",
    "null": "null",
}
_JSON_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),
    (int, "integer"),
    (float, "number"),
    (str, "string"),
    (list, "array"),
    (dict, "object"),
)


def validate(kind: str, job: object, *, job_id: str | None = None) -> dict[str, Any]:
    """Return ``job`` if it is a valid job of ``kind``, else raise
    :class:`~worker.errors.InvalidJob` carrying every violation.

    ``job_id`` names the job in the error's message; by default its own well-formed ``jobId``.
    An unknown ``kind`` raises :class:`KeyError`.
    """
    validator = _validator(kind)
    problem = _size_problem(job, _MAX_BYTES.get(kind, MAX_JOB_BYTES))
    if problem is not None:
        raise InvalidJob([problem], job_id=job_id)
    if not isinstance(job, dict):
        message = f"a job must be a JSON object (got {_json_type(job)})"
        raise InvalidJob([Violation("", "type", message)], job_id=job_id)
    violations = _schema_violations(kind, validator.iter_errors(job))
    for violation in _time_violations(job, violations.keys()):
        violations[violation.path] = violation
    if violations:
        own_id = job.get("jobId") if "jobId" not in violations else None
        job_id = job_id or (own_id if isinstance(own_id, str) else None)
        shown = sorted((_redacted(v) for v in violations.values()), key=lambda v: v.path)
        raise InvalidJob(shown, job_id=job_id)
    return job


def _redacted(violation: Violation) -> Violation:
    """A violation as it may be shown: its path names a field the job gave (an unknown one may
    be a URL) and its message may quote the value, so both lose their secrets."""
    return Violation(redact(violation.path), violation.code, redact(violation.message))


def _time_violations(job: dict[str, Any], broken: Collection[str]) -> Iterator[Violation]:
    """Real dates (the pattern lets 30 February through), ``stopAt`` after ``startAt``,
    ``startDeadline`` after it."""
    times: dict[str, float] = {}
    for field in TIME_FIELDS:
        value = job.get(field)
        if isinstance(value, str) and field not in broken:
            try:
                times[field] = parse_time(value)
            except ValueError as error:
                yield Violation(field, "date-time", f"must be a real date and time ({error})")
    start = times.get("startAt")
    if start is None:
        return
    shown = job["startAt"]
    if times.get("stopAt", start + 1) <= start:
        message = f"must be after startAt (got {job['stopAt']!r}, startAt is {shown!r})"
        yield Violation("stopAt", "after", message)
    if times.get("startDeadline", start + 1) <= start:
        # Equal could only fail: a start is made a moment after its time, past such a deadline.
        message = f"must be after startAt (got {job['startDeadline']!r}, startAt is {shown!r})"
        yield Violation("startDeadline", "after", message)


@functools.cache
def _registry() -> Registry[Any]:
    resources = [(uri, DRAFT202012.create_resource(s)) for uri, s in schemas.all_schemas().items()]
    return Registry().with_resources(resources).crawl()


@functools.cache
def _validator(kind: str) -> Draft202012Validator:
    if kind not in schemas.JOB_KINDS:
        known = ", ".join(schemas.JOB_KINDS)
        raise KeyError(f"unknown job kind {kind!r}: the job kinds are {known}")
    uri = f"urn:recq:schema:jobs:{kind}:v1"
    registry = _registry()
    return Draft202012Validator(_inlined(registry.contents(uri), registry.resolver(uri)))


_ANNOTATIONS = frozenset({"description", "examples", "title", "$comment"})


def _inlined(node: Any, resolver: Any) -> Any:
    """``node`` with each ``$ref`` replaced by the schema it points to, as ``resolver`` (a
    ``referencing`` resolver at ``node``'s base URI) finds it; recq's schemas have no reference
    to themselves. A reference with keywords beside it becomes ``allOf`` with them,
    which validates alike, unless those keywords are only annotations: then they are merged in.
    Errors read the same either way: the failing keyword, the value, the schema holding it."""
    if isinstance(node, list):
        return [_inlined(item, resolver) for item in node]
    if not isinstance(node, dict):
        return node
    inlined = {key: _inlined(value, resolver) for key, value in node.items() if key != "$ref"}
    if "$ref" not in node:
        return inlined
    resolved = resolver.lookup(node["$ref"])
    target = _inlined(resolved.contents, resolved.resolver)
    if inlined.keys() <= _ANNOTATIONS:
        return {**target, **inlined}
    return {**inlined, "allOf": [target]}


def _size_problem(job: object, limit: int) -> Violation | None:
    try:
        text = json.dumps(job, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as error:  # a set, a datetime, NaN, a cycle...
        return Violation("", "not-json", f"a job must hold only JSON values ({error})")
    except RecursionError:
        return Violation("", "too-deep", "a job must not nest its values thousands deep")
    size = len(text.encode())
    if size > limit:
        message = f"a job must be at most {limit} bytes of JSON (got {size})"
        return Violation("", "too-large", message)
    return None


def _schema_violations(kind: str, errors: Iterable[ValidationError]) -> dict[str, Violation]:
    """One violation per field path: the most basic one when a field breaks several rules."""
    found: dict[str, Violation] = {}
    for error in errors:
        for violation in _violations(kind, error):
            current = found.get(violation.path)
            if current is None or _rank(violation.code) < _rank(current.code):
                found[violation.path] = violation
    return found


def _rank(code: str) -> int:
    return _PRECEDENCE.index(code) if code in _PRECEDENCE else len(_PRECEDENCE)


def _violations(kind: str, error: ValidationError) -> Iterator[Violation]:
    parent = ".".join(str(part) for part in error.absolute_path)
    # types-jsonschema types these as unions with an "unset" marker; on a raised error they are set.
    keyword, instance, wanted, schema = _parts(error)
    if keyword == "required":
        # jsonschema reports each missing field in its own error but does not say which one.
        for name in wanted:
            if name not in instance:
                yield Violation(_join(parent, name), "required", "is required")
    elif keyword == "additionalProperties":
        known = schema.get("properties", {})
        owner = parent or f"{kind} jobs"
        for name in instance:
            if name not in known:
                message = f"is not a field of {owner}"
                yield Violation(_join(parent, str(name)), "unknown-field", message)
    else:
        yield Violation(parent, str(keyword), _message(error))


def _parts(error: ValidationError) -> tuple[str, Any, Any, Any]:
    return str(error.validator), error.instance, error.validator_value, error.schema


def _join(parent: str, name: str) -> str:
    return f"{parent}.{name}" if parent else name


_MESSAGES: dict[str, Callable[[Any, Any], str]] = {
    "type": lambda want, got: f"must be {_type_names(want)} (got {_json_type(got)})",
    "enum": lambda want, got: f"must be one of {', '.join(map(_show, want))} (got {_show(got)})",
    "const": lambda want, got: f"must be {_show(want)} (got {_show(got)})",
    "minimum": lambda want, got: f"must be at least {want} (got {_show(got)})",
    "maximum": lambda want, got: f"must be at most {want} (got {_show(got)})",
    "minLength": lambda want, got: (
        f"must be at least {_count(want, 'character')} long (got {len(got)})"
    ),
    "maxLength": lambda want, got: (
        f"must be at most {_count(want, 'character')} long (got {len(got)})"
    ),
    "maxProperties": lambda want, got: (
        f"must have at most {_count(want, 'field')} (got {len(got)})"
    ),
    "minItems": lambda want, got: f"must have at least {_count(want, 'item')} (got {len(got)})",
    "maxItems": lambda want, got: f"must have at most {_count(want, 'item')} (got {len(got)})",
    "uniqueItems": lambda _want, got: (
        f"must not repeat an item ({_show(_repeated(got))} is there twice)"
    ),
}


def _message(error: ValidationError) -> str:
    keyword, instance, wanted, schema = _parts(error)
    if keyword in _MESSAGES:
        return _MESSAGES[keyword](wanted, instance)
    if keyword in ("pattern", "not"):
        # The schema says in its own words what the rule means ("must be an absolute https:// URL").
        return str(schema.get("x-message", "has an unexpected format"))
    return str(error.message)


def _repeated(items: list[Any]) -> Any:
    seen: list[Any] = []
    for item in items:
        if item in seen:
            return item
        seen.append(item)
    return None


def _type_names(expected: str | list[str]) -> str:
    names = [expected] if isinstance(expected, str) else expected
    return " or ".join(_TYPE_NAMES.get(name, name) for name in names)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    # bool before int: in Python, True is an int.
    for python_type, name in _JSON_TYPES:
        if isinstance(value, python_type):
            return name
    return type(value).__name__


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _show(value: object) -> str:
    text = repr(value) if isinstance(value, str) else json.dumps(value, default=repr)
    return text if len(text) <= _SHOWN_CHARS else f"{text[: _SHOWN_CHARS - 3]}..."
