"""Request bodies: strict checks, so that a client's mistakes fail in tests, not in production."""

from __future__ import annotations

import pytest

from worker.jobs import START_RECORDING
from worker.validation import validate

START, END = "/v2/recordings/start", "/v2/recordings/end"
TRACK_START = "/v2/recordings/participant/track/start"
TRACK_STOP = "/v2/recordings/participant/track/stop"
TRACK = {"roomId": "r1", "participantId": "p1", "kind": "audio"}


def refused(response, *words):
    assert response.status_code == 400
    body = response.json()
    assert body["statusCode"] == 400
    for word in words:
        assert word in body["message"]
    return body


@pytest.mark.parametrize("field", ["jobId", "metadata", "startAt"])
def test_an_envelope_field_leaked_into_a_start_is_refused_by_name(api, sandbox, field):
    """Our job envelope's fields are not VideoSDK's: the sandbox names the intruder."""
    refused(api.post(START, {"roomId": "r1", field: "x"}), f'"{field}" is not allowed')
    assert not sandbox.recording_running("r1")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({}, ['"roomId" is required']),
        ({"roomId": ""}, ["roomId", "non-empty string"]),
        ({"roomId": 42}, ["roomId", "string"]),
        ({"roomId": None}, ["roomId"]),
        ({"roomId": "r1", "webhookUrl": None}, ["webhookUrl"]),
        ({"roomId": "r1", "webhookUrl": "not a url"}, ["webhookUrl"]),
        ({"roomId": "r1", "templateUrl": "http://example.com/t"}, ["templateUrl", "https"]),
        ({"roomId": "r1", "templateUrl": "https://localhost:3000/t"}, ["localhost"]),
        ({"roomId": "r1", "templateUrl": "https://127.0.0.1/t"}, ["templateUrl"]),
        ({"roomId": "r1", "config": "configObj"}, ['"config" must be an object']),
        ({"roomId": "r1", "config": {"layout": {"gridSize": 5}}}, ["config.layout.gridSize"]),
        ({"roomId": "r1", "config": {"layout": {"gridSize": 0}}}, ["gridSize", "1 to 4"]),
        ({"roomId": "r1", "config": {"layout": {"gridSize": "4"}}}, ["gridSize"]),
        ({"roomId": "r1", "config": {"layout": {"gridSize": True}}}, ["gridSize"]),
        ({"roomId": "r1", "config": {"layout": {"gridSize": 2.5}}}, ["gridSize"]),
        ({"roomId": "r1", "config": {"layout": {"type": "grid"}}}, ["config.layout.type"]),
        ({"roomId": "r1", "config": {"quality": "ultra"}}, ["config.quality", "low, med"]),
        ({"roomId": "r1", "config": {"mode": "video"}}, ["config.mode"]),
        ({"roomId": "r1", "config": {"resolution": "4k"}}, ['"config.resolution" is not']),
        ({"roomId": "r1", "transcription": {"enabled": "yes"}}, ["transcription.enabled"]),
        ({"roomId": "r1", "transcription": {"summary": {"prompt": 3}}}, ["summary.prompt"]),
    ],
    ids=str,
)
def test_a_malformed_start_is_refused_with_a_message(api, body, words):
    """Missing, mistyped or out-of-range fields answer 400 naming the field."""
    refused(api.post(START, body), *words)


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        (TRACK_START, {**TRACK, "kind": "screen"}, ["kind", "screen_audio"]),
        (TRACK_START, {**TRACK, "fileFormat": "mp4"}, ["fileFormat", "webm"]),
        (TRACK_START, {"roomId": "r1", "kind": "audio"}, ['"participantId" is required']),
        (TRACK_START, {**TRACK, "jobId": "j1"}, ['"jobId" is not allowed']),
        (TRACK_STOP, {"roomId": "r1", "participantId": "p1"}, ['"kind" is required']),
        (TRACK_STOP, {**TRACK, "fileFormat": "webm"}, ['"fileFormat" is not allowed']),
        (END, {"roomId": "r1", "config": {}}, ['"config" is not allowed']),
        (END, {}, ['"roomId" is required']),
    ],
    ids=str,
)
def test_a_malformed_track_or_stop_body_is_refused(api, path, body, words):
    """Track and stop bodies are held to their documented fields too."""
    refused(api.post(path, body), *words)


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_post_that_is_not_json_is_refused_with_415(api, content_type):
    """POSTs must say Content-Type: application/json."""
    response = api.post(START, {"roomId": "r1"}, headers={"Content-Type": content_type})
    assert response.status_code == 415


def test_a_grid_size_written_as_a_float_is_accepted_as_the_job_schema_accepts_it(api, sandbox):
    """JSON does not tell 2 from 2.0, nor does the job schema's "integer": a valid job's body
    must not be refused by the sandbox (it would fail for good in tests and `recq dev`)."""
    job = validate("start-recording", {"roomId": "r1", "config": {"layout": {"gridSize": 2.0}}})
    assert api.post(START, START_RECORDING.request_body(job)).status_code == 200
    assert sandbox.recording_running("r1")


def test_a_json_content_type_with_a_charset_is_accepted(api):
    """``application/json; charset=utf-8`` is JSON."""
    headers = {"Content-Type": "application/json; charset=utf-8"}
    assert api.post(START, {"roomId": "r1"}, headers=headers).status_code == 200


@pytest.mark.parametrize("data", [b"", b"{roomId: r1}", b'["r1"]', b'"r1"', b"\xff"])
def test_a_body_that_is_not_a_json_object_is_refused(api, data):
    """An empty, broken or non-object JSON body answers 400."""
    response = api.post(START, data=data)
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v2/recordings/stop"),
        ("GET", START),
        ("POST", "/v2/sessions/"),
        ("GET", "/v1/recordings"),
    ],
)
def test_an_undocumented_route_answers_404(api, method, path):
    """Wrong paths and methods, like the docs' stale /stop, answer 404 as JSON."""
    response = api.post(path, {"roomId": "r1"}) if method == "POST" else api.get(path)
    assert response.status_code == 404
    assert response.json()["statusCode"] == 404
