"""worker.validation: jobs are checked against their schema, with messages a person can act on."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest

import schemas
from worker.errors import InvalidJob, Violation
from worker.validation import ENVELOPE_FIELDS, MAX_JOB_BYTES, _validator, validate

ROOM = "abcd-efgh-ijkl"


def room_job(**fields: Any) -> dict[str, Any]:
    return {"roomId": ROOM, **fields}


def track_job(**fields: Any) -> dict[str, Any]:
    return {"roomId": ROOM, "participantId": "abcd", "kind": "audio", **fields}


def violations(kind: str, job: object) -> list[Violation]:
    with pytest.raises(InvalidJob) as caught:
        validate(kind, job)
    return list(caught.value.violations)


def only(kind: str, job: object) -> Violation:
    found = violations(kind, job)
    assert len(found) == 1, found
    return found[0]


def compact_size(job: object) -> int:
    return len(json.dumps(job, ensure_ascii=False, separators=(",", ":")).encode())


class TestValidJobs:
    def test_a_valid_job_is_returned_as_the_same_dict(self):
        """The caller gets its own job back, not a copy with defaults filled in."""
        job = track_job()
        assert validate("start-track-recording", job) is job
        assert "fileFormat" not in job

    def test_every_envelope_field_is_accepted_on_every_start_kind(self):
        """jobId, metadata and the times are recq's own fields, allowed beside VideoSDK's."""
        envelope = {
            "jobId": "crm:42",
            "metadata": {"nested": {"any": ["json", 1, None]}},
            "startAt": "2030-01-31T09:30:00+01:00",
            "stopAt": "2030-01-31T09:30:00.5Z",
            "startDeadline": "2030-01-31T08:45:00Z",
        }
        assert envelope.keys() == ENVELOPE_FIELDS
        validate("start-recording", room_job(**envelope))
        validate("start-track-recording", track_job(**envelope))


class TestMessages:
    def test_a_missing_required_field_is_named_and_said_to_be_required(self):
        """The path is the missing field itself, not its parent."""
        assert only("start-recording", {}) == Violation("roomId", "required", "is required")

    def test_every_missing_required_field_is_reported_once(self):
        """An empty track job lacks three fields, and each is named exactly once."""
        found = [(v.path, v.code) for v in violations("start-track-recording", {})]
        assert found == [
            ("kind", "required"),
            ("participantId", "required"),
            ("roomId", "required"),
        ]

    def test_an_unknown_field_is_named_as_not_a_field_of_the_job_kind(self):
        """A misspelt top-level field is refused by name."""
        found = only("start-recording", room_job(roomid="x"))
        assert found == Violation(
            "roomid", "unknown-field", "is not a field of start-recording jobs"
        )

    def test_an_unknown_nested_field_is_named_with_its_parent(self):
        """The message says which object does not have the field."""
        found = only("start-recording", room_job(config={"layout": {"colour": "red"}}))
        assert found == Violation(
            "config.layout.colour", "unknown-field", "is not a field of config.layout"
        )

    def test_an_enum_message_lists_the_allowed_values_and_the_one_given(self):
        """The reader sees what to write instead."""
        found = only("start-recording", room_job(config={"layout": {"type": "FOO"}}))
        assert found == Violation(
            "config.layout.type",
            "enum",
            "must be one of 'GRID', 'SPOTLIGHT', 'SIDEBAR' (got 'FOO')",
        )

    def test_a_type_message_names_the_expected_and_the_given_types(self):
        """JSON's type names are used, not Python's."""
        found = only("start-recording", room_job(config={"layout": {"gridSize": "4"}}))
        assert found == Violation(
            "config.layout.gridSize", "type", "must be an integer (got string)"
        )
        assert only("start-recording", room_job(config=[])).message == (
            "must be an object (got array)"
        )

    def test_a_boolean_is_not_taken_for_an_integer(self):
        """``true`` is refused where a number is expected, though Python counts it as 1."""
        found = only("start-recording", room_job(config={"layout": {"gridSize": True}}))
        assert found.message == "must be an integer (got boolean)"

    @pytest.mark.parametrize(
        ("size", "code", "message"),
        [(5, "maximum", "must be at most 4 (got 5)"), (0, "minimum", "must be at least 1 (got 0)")],
    )
    def test_a_range_message_names_the_limit_and_the_value(self, size, code, message):
        """gridSize is VideoSDK's 1 to 4."""
        found = only("start-recording", room_job(config={"layout": {"gridSize": size}}))
        assert found == Violation("config.layout.gridSize", code, message)

    def test_a_length_message_counts_characters(self):
        """Both limits of a string's length are reported in characters."""
        empty = room_job(transcription={"summary": {"prompt": ""}})
        assert only("start-recording", empty).message == "must be at least 1 character long (got 0)"
        long = room_job(transcription={"summary": {"prompt": "é" * 2001}})
        found = only("start-recording", long)
        assert (found.code, found.message) == (
            "maxLength",
            "must be at most 2000 characters long (got 2001)",
        )

    def test_a_pattern_message_comes_from_the_schema(self):
        """The schema's own sentence (x-message) explains the rule, not a regular expression."""
        found = only("start-recording", room_job(webhookUrl="http://example.com/hook"))
        assert found == Violation("webhookUrl", "pattern", "must be an absolute https:// URL")

    def test_a_template_on_localhost_is_refused_because_videosdk_cannot_reach_it(self):
        """The ``not`` rule reports its reason from the schema."""
        found = only("start-recording", room_job(templateUrl="https://127.0.0.1:8080/t"))
        assert found.path == "templateUrl"
        assert found.code == "not"
        assert "localhost" in found.message
        assert "reach" in found.message

    def test_a_const_message_names_the_only_value_allowed(self):
        """fileFormat can only be webm."""
        found = only("start-track-recording", track_job(fileFormat="mp4"))
        assert found == Violation("fileFormat", "const", "must be 'webm' (got 'mp4')")

    def test_too_much_metadata_is_refused_with_the_count(self):
        """metadata holds at most 32 fields."""
        found = only("start-recording", room_job(metadata={str(i): i for i in range(40)}))
        assert found == Violation(
            "metadata", "maxProperties", "must have at most 32 fields (got 40)"
        )

    def test_a_long_value_is_shortened_in_its_message(self):
        """A huge wrong value does not flood the log line that reports it."""
        found = only("start-track-recording", track_job(kind="x" * 5000))
        assert found.code == "enum"
        assert len(found.message) < 200
        assert found.message.endswith("...)")

    def test_a_violation_reads_as_path_colon_message(self):
        """The CLI prints each violation as ``path: message``."""
        found = only("start-recording", room_job(config={"layout": {"gridSize": 5}}))
        assert str(found) == "config.layout.gridSize: must be at most 4 (got 5)"


class TestWholeJob:
    @pytest.mark.parametrize("job", [[], ["roomId"], "abcd-efgh-ijkl", 42, None, True])
    def test_a_job_that_is_not_an_object_is_refused_as_a_whole(self, job):
        """The path is empty and the message says a job is a JSON object."""
        found = only("start-recording", job)
        assert (found.path, found.code) == ("", "type")
        assert found.message.startswith("a job must be a JSON object (got ")

    def test_a_job_larger_than_the_limit_is_refused_before_its_fields_are_checked(self):
        """Size comes first: an oversized job gets one violation, whatever else is wrong."""
        job = {"colour": "red", "metadata": {"pad": "x" * MAX_JOB_BYTES}}
        found = only("start-recording", job)
        assert (found.path, found.code) == ("", "too-large")
        assert str(MAX_JOB_BYTES) in found.message

    def test_a_job_nested_thousands_deep_is_refused_not_crashed_on(self):
        """Deeper than Python's recursion limit: one violation, not a RecursionError."""
        deep: list[object] = []
        for _ in range(100_000):
            deep = [deep]
        found = only("start-recording", room_job(metadata={"a": deep}))
        assert (found.path, found.code) == ("", "too-deep")

    def test_a_job_of_exactly_the_limit_is_accepted(self):
        """The limit is inclusive, measured as compact JSON."""
        job = room_job(metadata={"pad": ""})
        job["metadata"]["pad"] = "x" * (MAX_JOB_BYTES - compact_size(job))
        assert compact_size(job) == MAX_JOB_BYTES
        assert validate("start-recording", job) is job

    def test_the_size_is_counted_in_utf8_bytes(self):
        """Non-ASCII text counts for its encoded size, as on the wire."""
        job = room_job(metadata={"pad": "é" * (MAX_JOB_BYTES // 2)})
        assert len(json.dumps(job, ensure_ascii=False)) < MAX_JOB_BYTES
        assert only("start-recording", job).code == "too-large"

    def test_a_job_holding_a_value_json_cannot_carry_is_refused(self):
        """A datetime or NaN would not survive publishing, so it is refused here."""
        when = room_job(metadata={"when": datetime(2030, 1, 31, tzinfo=UTC)})
        nan = room_job(metadata={"score": float("nan")})
        for job in (when, nan):
            found = only("start-recording", job)
            assert (found.path, found.code) == ("", "not-json")


class TestSeveralViolations:
    def test_every_violation_is_reported_together_sorted_by_path(self):
        """The producer fixes a job in one pass, not one error at a time."""
        job = {
            "webhookUrl": "http://x",
            "config": {"theme": "dark", "layout": {"gridSize": 9}},
            "extra": 1,
        }
        found = [(v.path, v.code) for v in violations("start-recording", job)]
        assert found == [
            ("config.layout.gridSize", "maximum"),
            ("config.theme", "enum"),
            ("extra", "unknown-field"),
            ("roomId", "required"),
            ("webhookUrl", "pattern"),
        ]

    def test_the_error_message_lists_every_violation(self):
        """InvalidJob's text carries each ``path: message``."""
        with pytest.raises(InvalidJob) as caught:
            validate("start-track-recording", {"roomId": ROOM, "kind": "mic"})
        text = str(caught.value)
        assert "kind: must be one of 'audio', 'video', 'screen_audio', 'screen_video'" in text
        assert "participantId: is required" in text

    @pytest.mark.parametrize(
        ("job", "code"),
        [
            (track_job(kind=5), "type"),
            (track_job(participantId=""), "minLength"),
            (track_job(webhookUrl="http://localhost/"), "pattern"),
        ],
    )
    def test_a_field_breaking_several_rules_reports_only_the_most_basic(self, job, code):
        """A number is a type problem before an enum one; an empty id is too short, not odd."""
        assert only("start-track-recording", job).code == code


class TestScheduling:
    def test_a_malformed_scheduling_field_reports_its_format(self):
        """The format problem is the one worth fixing first; a time zone is mandatory."""
        found = only("start-track-recording", track_job(startAt="2030-01-31T09:30:00"))
        assert (found.path, found.code) == ("startAt", "pattern")
        assert "time zone" in found.message

    def test_a_time_that_is_not_a_real_date_is_refused(self):
        """The pattern lets 30 February through; recq does not."""
        found = only("start-recording", room_job(stopAt="2030-02-30T10:00:00Z"))
        assert (found.path, found.code) == ("stopAt", "date-time")
        assert "day is out of range" in found.message

    @pytest.mark.parametrize(
        "stop_at", ["2030-01-31T09:30:00Z", "2030-01-31T10:29:59+01:00", "2030-01-30T23:00:00Z"]
    )
    def test_stop_at_must_be_after_start_at_whatever_the_offsets(self, stop_at):
        """Times compare as instants: 10:29:59+01:00 is before 09:30:00Z."""
        job = room_job(startAt="2030-01-31T09:30:00Z", stopAt=stop_at)
        found = only("start-recording", job)
        assert found == Violation(
            "stopAt",
            "after",
            f"must be after startAt (got {stop_at!r}, startAt is '2030-01-31T09:30:00Z')",
        )

    def test_the_start_deadline_must_be_after_start_at(self):
        """A deadline equal to startAt could only fail (a start is made a moment after its
        time, by then past it): it was accepted, and the job always failed."""
        start = "2030-01-31T09:30:00Z"
        assert only("start-recording", room_job(startAt=start, startDeadline=start)).code == "after"
        validate("start-recording", room_job(startAt=start, startDeadline="2030-01-31T09:30:01Z"))
        found = only("start-recording", room_job(startAt=start, startDeadline="2030-01-31T09:29Z"))
        assert (found.path, found.code) == ("startDeadline", "pattern")
        late = room_job(startAt=start, startDeadline="2030-01-31T09:29:59Z")
        assert only("start-recording", late).code == "after"

    @pytest.mark.parametrize(
        "moment", ["2030-01-31t09:30:00z", "2030-01-31t09:30:00+01:00", "2030-01-31T09:30:00z"]
    )
    def test_a_lower_case_t_and_z_are_read(self, moment):
        """RFC 3339 allows them; they were refused as not a date-time."""
        validate("start-recording", room_job(startAt=moment))

    @pytest.mark.parametrize("moment", ["9999-12-31T23:59:59Z", "0001-01-01T00:00:00+01:00"])
    def test_a_year_out_of_range_is_refused(self, moment):
        """Year 9999 plus the start grace overflowed into a traceback (after the job was put
        on the schedule), and year 1 in a time zone east of UTC failed the job 'internal_error'."""
        found = only("start-recording", room_job(startAt=moment))
        assert (found.path, found.code) == ("startAt", "pattern")
        assert "in the years 1970 to 2999" in found.message

    def test_the_order_is_not_checked_when_start_at_is_itself_broken(self):
        """One problem at a time: the broken startAt, not a comparison with it."""
        job = room_job(startAt="2030-02-30T09:30:00Z", stopAt="2030-01-01T00:00:00Z")
        assert only("start-recording", job).path == "startAt"


class TestJobId:
    def test_the_given_job_id_names_the_job_in_the_error(self):
        """The worker passes the id it runs the job under."""
        with pytest.raises(InvalidJob) as caught:
            validate("start-recording", {}, job_id="job-7")
        assert caught.value.job_id == "job-7"
        assert str(caught.value).startswith("job job-7 is invalid: roomId: is required")

    def test_the_job_s_own_well_formed_id_names_it_by_default(self):
        """A producer's error names the job it tried to publish."""
        with pytest.raises(InvalidJob) as caught:
            validate("start-recording", {"jobId": "crm:42"})
        assert caught.value.job_id == "crm:42"

    def test_a_malformed_job_id_is_not_used_to_name_the_job(self):
        """An id that is itself a violation does not end up in logs as if it were one."""
        with pytest.raises(InvalidJob) as caught:
            validate("start-recording", {"jobId": "x" * 500})
        assert caught.value.job_id is None

    def test_the_violations_travel_in_the_error_info_of_failure_events(self):
        """Failure events carry each violation as field, code and message."""
        with pytest.raises(InvalidJob) as caught:
            validate("start-recording", room_job(config={"mode": "video"}))
        info = caught.value.info().to_json()
        assert info["reason"] == "invalid_job"
        assert info["violations"] == [
            {
                "field": "config.mode",
                "code": "enum",
                "message": "must be one of 'video-and-audio', 'audio' (got 'video')",
            }
        ]


class TestKinds:
    @pytest.mark.parametrize("kind", ["start_recording", "Start-Recording", "track-recording", ""])
    def test_an_unknown_kind_raises_key_error_naming_the_known_kinds(self, kind):
        """A programming mistake is not reported as the job's fault."""
        with pytest.raises(KeyError, match=r"unknown job kind .*start-recording"):
            validate(kind, room_job())

    def test_an_unknown_kind_is_reported_before_the_job_is_looked_at(self):
        """Even a job that is not an object gets the kind error, not InvalidJob."""
        with pytest.raises(KeyError):
            validate("nope", [])

    @pytest.mark.parametrize("kind", schemas.JOB_KINDS)
    def test_validation_is_fast_enough_to_run_on_every_job(self, kind):
        """Validators are built once; a full job takes well under a millisecond."""
        job = dict(schemas.examples(kind, "valid"))["full"]
        validate(kind, job)
        started = time.perf_counter()
        for _ in range(200):
            validate(kind, job)
        assert time.perf_counter() - started < 2.0

    @pytest.mark.parametrize("kind", schemas.JOB_KINDS)
    def test_references_are_resolved_once_when_the_validator_is_built(self, kind):
        """No job looks a `$ref` up: each is replaced by the schema it names (three times as
        fast), and the tests above show the errors read as they did."""
        assert "$ref" not in json.dumps(_validator(kind).schema)


def test_the_track_kinds_recq_knows_are_the_schemas():
    """worker.jobs.TRACK_KINDS (which names a batch child's stop) is each track schema's enum."""
    from worker.jobs import TRACK_KINDS  # noqa: PLC0415

    for name, path in (
        ("start-track-recording", ("properties", "kind")),
        ("stop-track-recording", ("properties", "kind")),
        ("bulk-track-recording", ("properties", "kinds", "items")),
    ):
        node = schemas.load(f"jobs/{name}.v1.json")
        for key in path:
            node = node[key]
        assert tuple(node["enum"]) == TRACK_KINDS


class TestNoSecretInViolations:
    SIG = "SIGSECRET0123456789"

    @pytest.mark.parametrize(
        "job",
        [
            {"roomId": "r", "config": {"theme": f"https://b/k?sig={SIG}"}},
            {"roomId": "r", f"https://hooks.example.com/cb?token={SIG}": True},
            {"roomId": "r", "config": {f"https://b/k?X-Amz-Signature={SIG}": 1}},
        ],
        ids=["quoted-value", "unknown-field", "unknown-nested-field"],
    )
    def test_a_violation_quoting_a_signed_url_keeps_no_signature(self, job):
        """A violation names the field (an unknown one may be a URL) and may quote the value:
        both reached states, events, `recq status` and `recq enqueue`'s output whole."""
        with pytest.raises(InvalidJob) as caught:
            validate("start-recording", job, job_id="j")
        assert self.SIG not in str(caught.value)
        assert self.SIG not in json.dumps(caught.value.info().to_json())
