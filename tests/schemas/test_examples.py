"""The published schemas are sound, and every published example does what its file name says.

An invalid example is named ``<field-path>__<code>[--<variant>].json``: it must break exactly
one rule, at that field, with that code (``__type.json``: the path is ``""``, the whole job).
Most rules are the schema's own, so any 2020-12 validator refuses those examples too; the rules
JSON Schema cannot state (codes in ``RECQ_ONLY_CODES``: a real date, times in order) only recq
checks, and a plain validator accepts their examples.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib.resources import files
from typing import Any, Literal

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

import schemas
from worker.errors import InvalidJob
from worker.validation import (
    ENVELOPE_FIELDS,
    MAX_BULK_JOB_BYTES,
    MAX_JOB_BYTES,
    RECQ_ONLY_CODES,
    validate,
)

EXAMPLE_KINDS = (*schemas.JOB_KINDS, "events")
EVENT_SCHEMA_ID = "urn:recq:schema:events:event:v1"
START_KINDS = ("start-recording", "start-track-recording")
STOP_KINDS = ("stop-recording", "stop-track-recording")
BULK_KINDS = {"bulk-track-recording": "start-track-recording"}
"""A bulk kind starts many jobs of one start kind (its children), and makes no call of its own."""
SCHEDULED_KINDS = (*START_KINDS, *BULK_KINDS)
"""The kinds that take every envelope field: a bulk job is scheduled like the starts it makes."""
STOP_ENVELOPE_FIELDS = frozenset({"jobId", "metadata", "stopAt"})
"""A stop job runs at its stopAt (or now): it has no start time and no start deadline."""
CHILD_FIELDS = ("fileFormat", "webhookUrl", "bucketDirPath")
"""The fields of a bulk job that are applied, unchanged, to every child."""


def expected_violation(stem: str) -> tuple[str, str]:
    """``config.layout.gridSize__maximum--variant`` -> ``("config.layout.gridSize", "maximum")``."""
    path, _, code = stem.partition("--")[0].rpartition("__")
    return path, code


def examples(kinds: tuple[str, ...], validity: Literal["valid", "invalid"]) -> list[Any]:
    return [
        pytest.param(kind, name, value, id=f"{kind}/{name}")
        for kind in kinds
        for name, value in schemas.examples(kind, validity)
    ]


def registry() -> Registry[Any]:
    """Every shipped schema, by its ``$id``, and nothing else."""
    return Registry().with_resources(
        (uri, DRAFT202012.create_resource(schema)) for uri, schema in schemas.all_schemas().items()
    )


def plain_validator(schema_id: str) -> Draft202012Validator:
    """What any other language's 2020-12 validator sees: the schemas alone, no recq code."""
    return Draft202012Validator(schemas.all_schemas()[schema_id], registry=registry())


def job_schema(kind: str) -> dict[str, Any]:
    """The schema of a job kind, by the ``$id`` the validator builds from the kind."""
    return schemas.all_schemas()[f"urn:recq:schema:jobs:{kind}:v1"]


def without_description(node: dict[str, Any]) -> dict[str, Any]:
    return {keyword: value for keyword, value in node.items() if keyword != "description"}


def walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object inside a schema, the schema included, except conditions (``if``)."""
    if isinstance(node, dict):
        yield node
        for keyword, value in node.items():
            if keyword != "if":
                yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


class TestSchemas:
    @pytest.mark.parametrize("schema_id", sorted(schemas.all_schemas()))
    def test_every_schema_is_a_valid_draft_2020_12_schema(self, schema_id):
        """Each schema passes the 2020-12 meta-schema and declares that draft."""
        schema = schemas.all_schemas()[schema_id]
        Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"

    @pytest.mark.parametrize("schema_id", sorted(schemas.all_schemas()))
    def test_every_schema_and_every_property_is_described(self, schema_id):
        """Readers in other languages get a title, a description and a description per field."""
        schema = schemas.all_schemas()[schema_id]
        assert schema["title"]
        assert schema["description"]
        resolver = registry().resolver(base_uri=schema_id)
        for node in walk(schema):
            for name, prop in node.get("properties", {}).items():
                described = prop.get("description") or resolver.lookup(prop["$ref"]).contents.get(
                    "description"
                )
                assert described, f"{schema_id}: property {name} has no description"

    def test_each_job_kind_has_a_versioned_schema(self):
        """A job kind's schema is found by the ``$id`` the validator builds from the kind."""
        ids = schemas.all_schemas()
        for kind in schemas.JOB_KINDS:
            assert f"urn:recq:schema:jobs:{kind}:v1" in ids
        assert EVENT_SCHEMA_ID in ids

    def test_every_job_kind_is_a_start_a_stop_or_a_bulk_start(self):
        """Each start kind has its stop kind, each bulk kind makes jobs of a start kind, and
        there are no other kinds."""
        assert sorted(schemas.JOB_KINDS) == sorted(START_KINDS + STOP_KINDS + tuple(BULK_KINDS))
        for start in START_KINDS:
            assert start.replace("start-", "stop-", 1) in STOP_KINDS
        for child in BULK_KINDS.values():
            assert child in START_KINDS

    @pytest.mark.parametrize("kind", schemas.JOB_KINDS)
    def test_every_envelope_field_of_a_job_schema_comes_from_common(self, kind):
        """jobId, metadata and the scheduling fields mean the same on every kind that has them;
        a start's jobId is common's startJobId (a jobId not ending in ':stop')."""
        properties = job_schema(kind)["properties"]
        offered = ENVELOPE_FIELDS & properties.keys()
        assert offered
        for field in offered:
            name = "startJobId" if field == "jobId" and kind in START_KINDS else field
            assert properties[field] == {"$ref": f"urn:recq:schema:jobs:common:v1#/$defs/{name}"}

    @pytest.mark.parametrize("kind", SCHEDULED_KINDS)
    def test_start_and_bulk_jobs_offer_every_envelope_field(self, kind):
        """A start, or a bulk start, takes jobId, metadata and all three scheduling fields."""
        properties = job_schema(kind)["properties"]
        assert properties.keys() >= ENVELOPE_FIELDS

    @pytest.mark.parametrize("kind", STOP_KINDS)
    def test_stop_jobs_offer_only_job_id_metadata_and_stop_at(self, kind):
        """A stop runs at its stopAt: startAt and startDeadline are unknown fields on it."""
        properties = job_schema(kind)["properties"]
        assert ENVELOPE_FIELDS & properties.keys() == STOP_ENVELOPE_FIELDS

    @pytest.mark.parametrize(("bulk", "child"), BULK_KINDS.items())
    def test_a_bulk_job_names_its_children_with_the_child_kinds_own_rules(self, bulk, child):
        """``participants`` holds the children's participantIds and ``kinds`` their kinds, each
        at most once, and the fields applied to every child are the child kind's own."""
        properties = job_schema(bulk)["properties"]
        child_properties = job_schema(child)["properties"]
        participants, kinds = properties["participants"], properties["kinds"]
        assert participants["items"] == without_description(child_properties["participantId"])
        assert kinds["items"] == without_description(child_properties["kind"])
        assert participants["uniqueItems"] is kinds["uniqueItems"] is True
        assert (participants["minItems"], participants["maxItems"]) == (1, 1000)
        assert (kinds["minItems"], kinds["maxItems"]) == (1, len(kinds["items"]["enum"]))
        for field in CHILD_FIELDS:
            assert without_description(properties[field]) == without_description(
                child_properties[field]
            )
        assert set(job_schema(bulk)["required"]) == {"roomId", "participants", "kinds"}

    @pytest.mark.parametrize("kind", schemas.JOB_KINDS)
    def test_every_object_of_a_job_refuses_unknown_fields(self, kind):
        """A misspelt field anywhere in a job is an error, never silently ignored."""
        schema = job_schema(kind)
        for node in walk(schema):
            if "properties" in node:
                assert node.get("additionalProperties") is False, node.get("description")

    @pytest.mark.parametrize("schema_id", sorted(schemas.all_schemas()))
    def test_references_name_schema_ids_never_files_or_web_addresses(self, schema_id):
        """Every ``$ref`` resolves inside the shipped schemas, so validation needs no network."""
        for node in walk(schemas.all_schemas()[schema_id]):
            ref = node.get("$ref")
            if isinstance(ref, str):
                assert ref.startswith(("#", "urn:recq:schema:")), ref


class TestExampleFolders:
    def test_every_example_folder_is_non_empty(self):
        """No kind, and no valid or invalid folder, is left without examples."""
        root = files("schemas").joinpath("examples")
        kinds = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
        assert kinds == sorted(EXAMPLE_KINDS)
        for kind in kinds:
            for validity in ("valid", "invalid"):
                assert schemas.examples(kind, validity), f"{kind}/{validity} is empty"

    @pytest.mark.parametrize("kind", schemas.JOB_KINDS)
    def test_each_job_kind_has_plenty_of_examples(self, kind):
        """At least four valid jobs (minimal, full...) and twelve invalid ones per kind."""
        valid = dict(schemas.examples(kind, "valid"))
        assert {"minimal", "full"} <= valid.keys()
        assert len(valid) >= 4
        assert len(schemas.examples(kind, "invalid")) >= 12

    def test_examples_of_an_unknown_kind_raise_key_error(self):
        """Asking for a kind without examples fails loudly instead of returning nothing."""
        with pytest.raises(KeyError, match="start_recording"):
            schemas.examples("start_recording", "valid")


class TestJobExamples:
    @pytest.mark.parametrize(("kind", "name", "job"), examples(schemas.JOB_KINDS, "valid"))
    def test_every_valid_job_example_is_accepted_unchanged(self, kind, name, job):
        """A valid example passes recq's validator and comes back as it was."""
        assert validate(kind, job) == job

    @pytest.mark.parametrize(("kind", "name", "job"), examples(schemas.JOB_KINDS, "invalid"))
    def test_every_invalid_job_example_breaks_exactly_the_rule_its_name_says(self, kind, name, job):
        """The validator reports one violation, at the named field, with the named code."""
        with pytest.raises(InvalidJob) as caught:
            validate(kind, job)
        found = [(v.path, v.code) for v in caught.value.violations]
        assert found == [expected_violation(name)]

    @pytest.mark.parametrize(("kind", "name", "job"), examples(schemas.JOB_KINDS, "invalid"))
    def test_the_schema_alone_refuses_every_invalid_job_example(self, kind, name, job):
        """Other languages' validators refuse the same jobs, save those that break only a rule
        JSON Schema cannot state (a real date, times in order): those they accept."""
        plain = plain_validator(f"urn:recq:schema:jobs:{kind}:v1")
        recq_only = expected_violation(name)[1] in RECQ_ONLY_CODES
        assert plain.is_valid(job) is recq_only

    @pytest.mark.parametrize("kind", SCHEDULED_KINDS)
    def test_each_rule_only_recq_checks_has_an_example_for_each_start_kind(self, kind):
        """Producers in other languages can see what recq refuses beyond the schema."""
        shown = {expected_violation(name)[1] for name, _ in schemas.examples(kind, "invalid")}
        assert shown >= RECQ_ONLY_CODES

    @pytest.mark.parametrize("kind", BULK_KINDS)
    def test_a_bulk_kind_shows_its_participant_limit_from_both_sides(self, kind):
        """1,000 distinct participants are accepted, 1,001 are refused."""
        limit = job_schema(kind)["properties"]["participants"]["maxItems"]
        most = dict(schemas.examples(kind, "valid"))["one-thousand-participants"]["participants"]
        too_many = dict(schemas.examples(kind, "invalid"))["participants__maxItems"]["participants"]
        assert len(set(most)) == len(most) == limit
        assert len(set(too_many)) == len(too_many) == limit + 1

    @pytest.mark.parametrize("kind", BULK_KINDS)
    def test_a_bulk_job_at_every_limit_is_larger_than_other_jobs_may_be(self, kind):
        """1,000 participant ids of 256 characters, and every other field at its longest, fit
        the bulk size limit, but no other kind's."""
        job = dict(schemas.examples(kind, "valid"))["at-the-limits"]
        size = len(json.dumps(job, ensure_ascii=False, separators=(",", ":")).encode())
        assert MAX_JOB_BYTES < size <= MAX_BULK_JOB_BYTES
        assert validate(kind, job) == job

    @pytest.mark.parametrize(("kind", "name", "job"), examples(schemas.JOB_KINDS, "valid"))
    def test_the_schema_alone_accepts_every_valid_job_example(self, kind, name, job):
        """recq's validator adds messages, not rules, to what the schema says."""
        assert plain_validator(f"urn:recq:schema:jobs:{kind}:v1").is_valid(job)


class TestEventExamples:
    @pytest.mark.parametrize(("kind", "name", "event"), examples(("events",), "valid"))
    def test_every_valid_event_example_matches_the_event_schema(self, kind, name, event):
        """Each example event is a well-formed recq CloudEvent."""
        errors = [e.message for e in plain_validator(EVENT_SCHEMA_ID).iter_errors(event)]
        assert errors == []
        assert event["type"] == name.partition("--")[0]

    @pytest.mark.parametrize(("kind", "name", "event"), examples(("events",), "invalid"))
    def test_every_invalid_event_example_breaks_exactly_the_rule_its_name_says(
        self, kind, name, event
    ):
        """One schema error, at the named place, from the named keyword."""
        errors = list(plain_validator(EVENT_SCHEMA_ID).iter_errors(event))
        found = [(".".join(str(p) for p in e.absolute_path), e.validator) for e in errors]
        assert found == [expected_violation(name)]

    @pytest.mark.parametrize(
        ("kind", "name", "event"),
        [p for p in examples(("events",), "valid") if p.values[2]["type"] == "batch.completed"],
    )
    def test_a_completed_batch_accounts_for_every_child(self, kind, name, event):
        """The counts add up over the children, cancelled ones counting as failed; the state
        says whether all, some or none succeeded; each child is named
        ``<batchId>:<kind>:<participantId>``, and only a failed one carries an error."""
        data = event["data"]
        states = [child["state"] for child in data["children"]]
        succeeded = states.count("succeeded")
        assert data["counts"] == {
            "total": len(states),
            "succeeded": succeeded,
            "failed": len(states) - succeeded,
            "pending": 0,
        }
        whole = {len(states): "succeeded", 0: "failed"}.get(succeeded, "partially_failed")
        assert data["state"] == whole
        for child in data["children"]:
            assert child["jobId"] == f"{data['jobId']}:{child['kind']}:{child['participantId']}"
            assert ("error" in child) is (child["state"] == "failed")

    def test_every_event_type_the_schema_names_has_a_valid_example(self):
        """Subscribers can see an example of each event type they may bind to."""
        named = set(schemas.load("events/event.v1.json")["properties"]["type"]["examples"])
        shown = {event["type"] for _, event in schemas.examples("events", "valid")}
        assert named <= shown
