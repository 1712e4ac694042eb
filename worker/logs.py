"""How a worker logs: readable lines by default, JSON lines with ``RECQ_LOG_FORMAT=json``.

Every line about a job carries its id (``job_id``): the runner sets it for everything logged while
it runs a job (:func:`job_context`), and Celery's own lines about a task ("received",
"succeeded") give it in their arguments. Those two lines come at ``--loglevel DEBUG`` only: at
INFO, a worker running a thousand jobs a second would spend a tenth of its time writing them, and
every job's state and events already record it (a task that raises is still logged at ERROR).

Every line, at every level, passes through :func:`worker.redact.redact` and loses the account
secret, so tokens, the secret and pre-signed URLs' query strings never reach a log, whatever a
library chose to print.

:class:`RecqLogging` is the app's ``log_cls``: Celery sets up logging as usual (levels, log
file, task loggers, stdout redirection) and each handler it adds gets recq's formatter and
filter. ``celery -A worker.app worker`` logs the same way as ``recq worker``.

With JSON logs, :class:`WorkerProgram` (the app's ``Worker``) turns the shutdown notices Celery
writes to stdout itself ("worker: Warm shutdown (MainProcess)") into log lines, so that every
line a worker stopped by SIGTERM or Ctrl-C writes is JSON.
"""

from __future__ import annotations

import copy
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from celery import signals
from celery.app.log import Logging
from celery.apps import worker as celery_worker
from celery.utils.log import mlevel
from celery.worker.consumer import consumer as _celery_consumer

from worker.redact import REDACTED, redact
from worker.settings import Settings

logger = logging.getLogger(__name__)
_current_job: ContextVar[str | None] = ContextVar("recq_job_id", default=None)
TEXT_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(job)s%(message)s"


@contextmanager
def job_context(job_id: str | None) -> Iterator[None]:
    """Tag every line logged in this context (this thread) with ``job_id``."""
    token = _current_job.set(job_id)
    try:
        yield
    finally:
        _current_job.reset(token)


class JobIdFilter(logging.Filter):
    """Sets ``record.job_id``: the job being run, or the task id Celery logs about."""

    def filter(self, record: logging.LogRecord) -> bool:
        job_id = _current_job.get()
        if job_id is None and isinstance(record.args, Mapping):
            # Celery's task lines: "Task %(name)s[%(id)s] received" and the like.
            candidate = record.args.get("id")
            job_id = candidate if isinstance(candidate, str) else None
        record.job_id = job_id
        return True


celery_consumer: Any = _celery_consumer  # celery-types does not declare its message templates


def _without_message_bodies(record: logging.LogRecord) -> logging.LogRecord:
    """Leave out what Celery's lines about a message it refused print of it: its body (which
    no pattern can read once it is base64 or pickled) and its headers (whose ``kwargsrepr`` a
    producer may fill with the job), as the README promises. Their size stays."""
    args = record.args
    if not isinstance(args, tuple) or record.msg not in _BODY_DUMPS:
        return record
    record = copy.copy(record)  # another handler may format the original
    if record.msg == celery_consumer.UNKNOWN_TASK_ERROR and len(args) == 4:  # noqa: PLR2004
        exc, body, headers, delivery = args
        named = (
            {k: v for k, v in headers.items() if k in ("id", "task")}
            if isinstance(headers, dict)
            else None
        )
        record.args = (exc, _not_logged(body), named, delivery)
    elif record.msg == celery_consumer.INVALID_TASK_ERROR and len(args) == 2:  # noqa: PLR2004
        record.args = (args[0], _not_logged(args[1]))
    elif record.msg == celery_consumer.UNKNOWN_FORMAT and len(args) == 1:
        record.args = ("(not logged: its body and headers are left out)",)
    return record


_BODY_DUMPS = (
    celery_consumer.UNKNOWN_TASK_ERROR,
    celery_consumer.INVALID_TASK_ERROR,
    celery_consumer.UNKNOWN_FORMAT,
)


def _not_logged(body: object) -> str:
    return f"({len(str(body))} characters, not logged)"


class _Redacting(logging.Formatter):
    """Formats a record whole (message, traceback, stack) and then removes secrets."""

    def __init__(self, settings: Settings, fmt: str | None = None) -> None:
        super().__init__(fmt)
        credentials = settings.credentials
        self._secret = credentials.secret.reveal() if credentials is not None else None

    def clean(self, text: str) -> str:
        if self._secret:
            text = text.replace(self._secret, REDACTED)
        return redact(text)


class TextFormatter(_Redacting):
    """``[time: LEVEL/Process] job=ID: message``."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        job_id = getattr(record, "job_id", None)
        record.job = f"job={job_id}: " if job_id else ""
        return self.clean(super().format(_without_message_bodies(record)))


class JsonFormatter(_Redacting):
    """One JSON object a line: time, level, logger, process, job_id, message, exception."""

    def format(self, record: logging.LogRecord) -> str:
        record = _without_message_bodies(record)
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "job_id": getattr(record, "job_id", None),
            "message": self.clean(record.getMessage()),
        }
        if record.exc_info:
            line["exception"] = self.clean(self.formatException(record.exc_info))
        if record.stack_info:
            line["stack"] = self.clean(self.formatStack(record.stack_info))
        return json.dumps(line, default=str)


def formatter_for(settings: Settings) -> logging.Formatter:
    """The formatter ``RECQ_LOG_FORMAT`` asks for."""
    if settings.log_format == "json":
        return JsonFormatter(settings)
    return TextFormatter(settings)


def prepared(handler: logging.Handler, settings: Settings) -> logging.Handler:
    """``handler`` with recq's formatter and job-id filter."""
    handler.setFormatter(formatter_for(settings))
    handler.addFilter(JobIdFilter())
    return handler


def install(settings: Settings) -> None:
    """Log through recq's formatter from the first line on, warnings included.

    ``recq worker`` calls it before Celery starts, so that even what Celery says before it sets
    up logging (a warning about running as root) comes out formatted and redacted. Celery then
    keeps this handler and only sets the level.
    """
    logging.getLogger().addHandler(prepared(logging.StreamHandler(sys.stderr), settings))
    logging.captureWarnings(True)


# Celery's loggers for its two lines per task ("Task ... received", "Task ... succeeded in").
PER_TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")


class RecqLogging(Logging):
    """Celery's logging set-up, with recq's formatter and job-id filter on every handler."""

    def setup(self, loglevel: Any = None, *args: Any, **kwargs: Any) -> Any:
        """Celery's set-up; then Celery's per-task lines only when debugging."""
        handled = super().setup(loglevel, *args, **kwargs)
        debugging = mlevel(loglevel or self.loglevel) <= logging.DEBUG
        for name in PER_TASK_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET if debugging else logging.WARNING)
        return handled

    def setup_handlers(
        self,
        logger: logging.Logger,
        logfile: Any,
        format: str,
        colorize: bool,
        formatter: Any = None,
        **kwargs: Any,
    ) -> logging.Logger:
        celery_logging: Any = self  # celery-types does not declare these helpers
        if celery_logging._is_configured(logger):
            return logger
        handler = celery_logging._detect_handler(logfile)
        logger.addHandler(prepared(handler, celery_logging.app.settings))
        return logger


class WorkerProgram(celery_worker.Worker):
    """Celery's worker program; with JSON logs, its shutdown notices are log lines.

    Celery's signal handlers write "worker: Warm shutdown (MainProcess)" and "Hitting Ctrl+C
    again ..." straight to stdout, outside logging: one plain line in a stream of JSON, which a
    log shipper that parses each line rejects. Celery's handlers take ``verbose=False`` to stay
    silent; the notice is then logged when Celery announces the shutdown
    (``worker_shutting_down``). A cold shutdown (SIGQUIT, or Ctrl-C twice) still prints
    Celery's own plain lines while it cancels the jobs that run.
    """

    def install_platform_tweaks(self, worker: Any) -> None:
        super().install_platform_tweaks(worker)
        if self.app.settings.log_format != "json":
            return
        handlers: Any = celery_worker  # celery-types does not declare the handler installers
        handlers.install_worker_term_handler(worker, verbose=False)
        handlers.install_worker_term_hard_handler(worker, verbose=False)
        handlers.install_worker_int_handler(worker, callback=_first_interrupt, verbose=False)
        signals.worker_shutting_down.connect(_log_shutdown, weak=False, dispatch_uid=__name__)


def _log_shutdown(sender: Any, how: str = "Warm", **_: Any) -> None:
    logger.info("worker: %s shutdown (MainProcess)", how)


def _first_interrupt(worker: Any) -> None:
    """Celery's first Ctrl-C: warn that a second one cancels the running jobs, then make it so."""
    logger.warning(
        "worker: Hitting Ctrl+C again will initiate cold shutdown, terminating all running tasks!"
    )
    handlers: Any = celery_worker
    handlers.install_worker_term_hard_handler(worker, sig="SIGINT", verbose=False)
