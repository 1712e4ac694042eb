"""The worker's message consumer: every message it cannot run still ends in a recorded state.

Celery logs and drops a message it cannot decode (a pickled body, broken JSON), one that is not a
task message, one naming an unknown task, or one whose protocol fields are malformed. recq keeps
that behaviour (the message is never retried, so it cannot loop) and adds the record: wherever the
message names an id, the job is marked ``failed`` with a reason and kept as a dead letter.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from celery.worker.consumer import Consumer
from kombu.exceptions import ContentDisallowed
from vine import promise

from worker.logs import job_context
from worker.redact import redact
from worker.transport import UNREADABLE

logger = logging.getLogger(__name__)


_TIMING_HEADERS = {
    "eta": "Celery's eta header is not supported: give the job a startAt, and recq holds it",
    "expires": "Celery's expires header is not supported: give the job a startDeadline",
}
"""Celery's timing headers a job must not carry, each with what to do instead."""


_UTF8_JSON = re.compile(r"application/json\s*;\s*charset\s*=\s*\"?utf-?8\"?", re.IGNORECASE)


def _headers(message: Any) -> dict[str, Any]:
    headers = getattr(message, "headers", None)
    return headers if isinstance(headers, dict) else {}


def _correlation_id(message: Any) -> str | None:
    properties = getattr(message, "properties", None)
    found = properties.get("correlation_id") if isinstance(properties, dict) else None
    return found if isinstance(found, str) and found else None


def _id_problem(message: Any, headers: dict[str, Any]) -> str | None:
    """An ``id`` header that is not a job id (null, a number, empty) is replaced by the
    message's ``correlation_id``; without either the message is refused. (A null id ran as job
    ``None``, and every later such message was dropped as that job's duplicate.)"""
    job_id = headers.get("id")
    if "id" not in headers or (isinstance(job_id, str) and job_id):
        return None  # a message with no id at all is not a task message: Celery says so
    fallback = _correlation_id(message)
    if fallback is None:
        return f"the message's id header must be the job id, a non-empty string (got {job_id!r})"
    headers["id"] = fallback
    return None


# Celery reads these from a task message's embed (its body's third element): a value of another
# type fails in the pool's thread, where nothing acknowledges the message, and the worker's
# slot is lost with it for good.
_EMBED_TYPES: dict[str, type] = {"callbacks": list, "errbacks": list, "chain": list, "chord": dict}
_TRIPLE = 3
_JSON_TYPES = {
    dict: "an object",
    list: "a list",
    tuple: "a list",
    str: "a string",
    bool: "a boolean",
}


def _body_problem(message: Any) -> str | None:
    """Why a task message's ``[args, kwargs, embed]`` body would fail where nothing can catch
    it (in the pool's thread); None for a body Celery reports itself (one it cannot decode, or
    not a triple). Celery reads the same decoded payload: the body is decoded once."""
    try:
        payload = message.payload
    except Exception:  # noqa: BLE001 - Celery reports it (on_decode_error, on_invalid_task)
        return None
    if not isinstance(payload, list | tuple) or len(payload) != _TRIPLE:
        return None
    args, kwargs, embed = payload
    if (
        isinstance(args, list | tuple)
        and isinstance(kwargs, dict)
        and (embed is None or (isinstance(embed, dict) and _embed_fits(embed)))
    ):
        return None  # every message recq's producer and Celery's send: nothing more to read
    embedded = embed if isinstance(embed, dict) else {}
    checks = [
        ("args (its body's first element)", args, list, False),
        ("kwargs (its body's second element)", kwargs, dict, False),
        ("embed (its body's third element)", embed, dict, True),
        *(
            (f"embed.{field}", embedded.get(field), kind, True)
            for field, kind in _EMBED_TYPES.items()
        ),
    ]
    for name, value, kind, nullable in checks:
        if isinstance(value, kind) or (kind is list and isinstance(value, tuple)):
            continue
        if value is None and nullable:
            continue
        wanted = _JSON_TYPES[kind] + (" or null" if nullable else "")
        return f"the task message's {name} must be {wanted}, not {_type(value)}"
    return None


def _embed_fits(embed: dict[str, Any]) -> bool:
    return all(
        embed.get(field) is None or isinstance(embed[field], kind)
        for field, kind in _EMBED_TYPES.items()
    )


def _type(value: Any) -> str:
    """A JSON value's type, as a message's author would name it."""
    if value is None:
        return "null"
    if type(value) in _JSON_TYPES:
        return _JSON_TYPES[type(value)]
    return "a number" if isinstance(value, int | float) else type(value).__name__


class RecqConsumer(Consumer):
    """Celery's consumer, recording each refused message as a failed job."""

    # Set by Consumer.__init__ from the broker connection; celery-types does not declare them.
    connection_errors: tuple[type[BaseException], ...]
    channel_errors: tuple[type[BaseException], ...]

    def create_task_handler(self, promise: Any = promise) -> Any:
        """Celery's handler, guarded: a malformed message must never stop the worker.

        Celery catches the errors it expects from a bad message, but not all: a JSON body that is
        not an ``[args, kwargs, embed]`` triple raises ValueError out of the consumer, and the
        worker stops with "Unrecoverable error". Connection errors still propagate, so that the
        consumer reconnects as usual.
        """
        handle = super().create_task_handler(promise)
        fatal = tuple(self.connection_errors) + tuple(self.channel_errors)

        def on_task_received(message: Any) -> Any:
            job_id = _headers(message).get("id")
            # Celery's lines about receiving the message and handing it to the pool name the job.
            with job_context(job_id if isinstance(job_id, str) else None):
                if self._screened(message):
                    return None
                try:
                    return handle(message)
                except fatal:
                    raise
                except Exception as exc:
                    logger.exception("refusing a malformed task message")
                    detail = f"the task message is malformed: {exc!r}"
                    self._rejected(message, "malformed_message", detail)
                    return None

        return on_task_received

    def _screened(self, message: Any) -> bool:
        """Refuse and record a message Celery would mishandle (True), before it sees it.

        Marked unreadable by the transport; carrying Celery's ``eta`` or ``expires``; or with no
        content type (Celery failed on its body with an error that did not say why). A content
        type of JSON with a UTF-8 charset (``application/json; charset=utf-8``, as HTTP-minded
        clients write it) is read as JSON."""
        headers = _headers(message)
        unreadable = headers.get(UNREADABLE)
        if isinstance(unreadable, str):  # marked by recq's Redis transport
            self._unreadable(message, unreadable)
            return True
        timed = [name for name in _TIMING_HEADERS if headers.get(name)]
        if timed:
            self._timed(message, timed)
            return True
        content_type = getattr(message, "content_type", None)
        if not content_type:
            detail = "the message names no content type: it must be application/json"
            self._rejected(message, "undecodable_message", detail)
            return True
        if content_type != "application/json" and _UTF8_JSON.fullmatch(str(content_type)):
            message.content_type = "application/json"
        problem = _id_problem(message, headers) or _body_problem(message)
        if problem is not None:
            self._rejected(message, "malformed_message", problem)
            return True
        return False

    def _timed(self, message: Any, headers: list[str]) -> None:
        """A message with Celery's ``eta`` or ``expires``: Celery would hold it in memory (and
        run it twice once the visibility timeout passes) or discard it unrecorded. Refused,
        naming the job field that does it right (on RabbitMQ, rejected to the dead queue)."""
        detail = "; ".join(_TIMING_HEADERS[name] for name in headers)
        self._rejected(message, "malformed_message", detail)

    def _unreadable(self, message: Any, problem: str) -> None:
        """A message whose envelope the transport could not read: acknowledged, recorded."""
        logger.critical("cannot read a message (its content is not logged): %s", problem)
        message.ack()
        self._refused(message, "undecodable_message", f"cannot read the message: {problem}")

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        # Celery's own handler logs the body, which no redaction can read (base64, say) and
        # which holds the job: only its size is logged here. Acknowledged, as Celery does.
        content_type = getattr(message, "content_type", None)
        size = len(message.body or b"")
        logger.critical(
            "cannot decode a message (%s, %d bytes; its body is not logged): %s",
            content_type,
            size,
            redact(str(exc)),
        )
        message.ack()
        self._refused(message, "undecodable_message", f"cannot decode a {content_type} body: {exc}")

    def on_unknown_message(self, body: Any, message: Any) -> None:
        super().on_unknown_message(body, message)
        self._refused(message, "malformed_message", "the message is not a Celery task message")

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        super().on_unknown_task(body, message, exc)
        task = _headers(message).get("task")
        self._refused(message, "unknown_task", f"no task is named {task!r}")

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        super().on_invalid_task(body, message, exc)
        if isinstance(exc, ContentDisallowed):
            # A pickled (or any non-JSON) body is refused before it is ever deserialised.
            content_type = getattr(message, "content_type", None)
            detail = f"content type {content_type} is refused: recq accepts JSON only"
            self._refused(message, "undecodable_message", detail)
            return
        self._refused(message, "malformed_message", f"the task message is malformed: {exc}")

    def _rejected(self, message: Any, reason: str, detail: str) -> None:
        """Reject a message (on RabbitMQ, to the dead queue) and record it refused."""
        message.reject_log_error(logger, self.connection_errors)
        self._refused(message, reason, detail)

    def _refused(self, message: Any, reason: str, detail: str) -> None:
        detail = redact(detail)  # an exception's text may quote the message, and what it holds
        headers = _headers(message)
        job_id, task = headers.get("id"), headers.get("task")
        if not isinstance(job_id, str) or not job_id:  # Celery sets both; a producer may not
            job_id = _correlation_id(message)
        if job_id is None:
            logger.error("refused a message without an id (%s): %s", reason, detail)
            return
        try:
            app: Any = self.app  # a RecqCelery: it carries the runner
            app.runner.refuse(
                job_id, task if isinstance(task, str) else None, reason=reason, message=detail
            )
        except Exception:
            # Recording is best effort here: the message itself is already dropped and logged.
            logger.exception("could not record refused message %s", job_id)
