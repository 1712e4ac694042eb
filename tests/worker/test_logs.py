"""Log lines: readable or JSON, tagged with their job, and never carrying a secret."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from worker.errors import SettingsError
from worker.logs import JobIdFilter, JsonFormatter, TextFormatter, job_context
from worker.settings import Credentials, Secret, Settings

SECRET = "s3cr3t-value-of-the-account-0123456789abcdef"
TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJhcGlrZXkiOiJrIn0.c2lnbmF0dXJlLXBhcnQ"
PRESIGNED = "https://bucket.s3.amazonaws.com/rec.mp4?X-Amz-Signature=abcdef0123&X-Amz-Credential=k"


@pytest.fixture
def settings() -> Settings:
    return Settings(credentials=Credentials(api_key="key", secret=Secret(SECRET)))


def _fail() -> None:
    raise RuntimeError(f"failed with {TOKEN} and {SECRET}")


def _record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            _fail()
        except RuntimeError:
            exc_info = sys.exc_info()
    record = logging.LogRecord("test", logging.DEBUG, __file__, 1, message, args, exc_info)
    JobIdFilter().filter(record)
    return record


class TestJobIds:
    def test_a_line_logged_while_a_job_runs_carries_its_id(self, settings):
        """Inside job_context, every line names the job."""
        with job_context("job-7"):
            record = _record("calling VideoSDK")
        line = json.loads(JsonFormatter(settings).format(record))
        assert line["job_id"] == "job-7"
        assert TextFormatter(settings).format(record).endswith("job=job-7: calling VideoSDK")

    def test_celery_task_lines_carry_the_task_id(self, settings):
        """Celery's "Task x[id] received" lines give the id in their arguments."""
        record = _record("Task %(name)s[%(id)s] received", {"name": "recq.x", "id": "job-8"})
        assert json.loads(JsonFormatter(settings).format(record))["job_id"] == "job-8"

    def test_a_line_about_no_job_has_a_null_job_id(self, settings):
        """Lines outside any job say so, with job_id null and no job prefix."""
        record = _record("worker ready")
        assert json.loads(JsonFormatter(settings).format(record))["job_id"] is None
        assert "job=" not in TextFormatter(settings).format(record)


class TestRedaction:
    @pytest.mark.parametrize("formatter", [JsonFormatter, TextFormatter])
    def test_secrets_tokens_and_signatures_never_reach_a_line(self, settings, formatter):
        """The account secret, a JWT and a pre-signed URL's query are removed, tracebacks too."""
        record = _record("secret %s token %s url %s", SECRET, TOKEN, PRESIGNED, exc=True)
        text = formatter(settings).format(record)
        for leaked in (SECRET, TOKEN, "X-Amz-Signature", "abcdef0123"):
            assert leaked not in text
        assert "https://bucket.s3.amazonaws.com/rec.mp4?[redacted]" in text

    def test_a_json_line_is_one_object_with_the_documented_fields(self, settings):
        """time, level, logger, process, job_id, message, and exception when there is one."""
        line = json.loads(JsonFormatter(settings).format(_record("boom", exc=True)))
        assert set(line) == {"time", "level", "logger", "process", "job_id", "message", "exception"}
        assert line["level"] == "DEBUG"
        assert "RuntimeError" in line["exception"]


class TestLogFormatSetting:
    def test_json_is_chosen_with_recq_log_format(self):
        """RECQ_LOG_FORMAT=json selects JSON lines; the default is text."""
        assert Settings.from_env({"RECQ_LOG_FORMAT": "json"}).log_format == "json"
        assert Settings.from_env({}).log_format == "text"

    def test_an_unknown_format_is_refused_naming_the_choices(self):
        """Any other value is a settings error that lists text and json."""
        with pytest.raises(SettingsError, match="RECQ_LOG_FORMAT='xml' must be one of text, json"):
            Settings.from_env({"RECQ_LOG_FORMAT": "xml"})


class TestRefusedMessageLines:
    def test_the_original_record_is_left_whole_for_other_handlers(self, settings):
        """Leaving a refused message's body out of one handler's line must not change what
        another handler is given (it reported the size of the replacement text)."""
        from celery.worker.consumer import consumer  # noqa: PLC0415

        body = "b" * 500
        record = logging.LogRecord(
            "celery.worker.consumer.consumer",
            logging.ERROR,
            __file__,
            1,
            consumer.INVALID_TASK_ERROR,
            (ValueError("x"), body),
            None,
        )
        first = TextFormatter(settings).format(record)
        second = TextFormatter(settings).format(record)
        assert "(500 characters, not logged)" in first
        assert first == second
        assert record.args == (record.args[0], body)
