"""Room and track recordings: documented answers, and the per-room rules of VideoSDK."""

from __future__ import annotations

START, END = "/v2/recordings/start", "/v2/recordings/end"
TRACK_START = "/v2/recordings/participant/track/start"
TRACK_STOP = "/v2/recordings/participant/track/stop"
TRACK = {"roomId": "r1", "participantId": "p1", "kind": "audio"}


class TestRoomRecording:
    def test_a_start_answers_the_documented_json_string(self, api, sandbox):
        """A start answers 200 with the JSON string of the docs, and the recording runs."""
        response = api.post(START, {"roomId": "r1"})
        assert response.status_code == 200
        assert response.json() == "Recording started successfully"
        assert response.headers["Content-Type"].startswith("application/json")
        assert sandbox.recording_running("r1")

    def test_a_start_with_every_documented_field_is_accepted(self, api):
        """All of the seed page's fields, with valid values, are accepted."""
        body = {
            "roomId": "r1",
            "templateUrl": "https://example.com/template?meetingId=r1",
            "transcription": {"enabled": True, "summary": {"enabled": True, "prompt": "Short"}},
            "config": {
                "layout": {"type": "GRID", "priority": "SPEAKER", "gridSize": 4},
                "theme": "DARK",
                "mode": "video-and-audio",
                "quality": "high",
                "orientation": "landscape",
            },
            "webhookUrl": "https://example.com/hook",
            "awsDirPath": "recordings/r1",
            "preSignedUrl": "https://bucket.s3.amazonaws.com/x?sig=1",
        }
        assert api.post(START, body).status_code == 200

    def test_a_second_start_is_refused_as_already_running(self, api):
        """Starting a running room recording answers 400 with code 4011."""
        api.post(START, {"roomId": "r1"})
        response = api.post(START, {"roomId": "r1"})
        assert response.status_code == 400
        assert response.json()["code"] == 4011
        assert response.json()["message"] == "Recording is already running for this room"

    def test_an_end_stops_the_recording(self, api, sandbox):
        """An end answers the documented string and the room can be recorded again."""
        api.post(START, {"roomId": "r1"})
        response = api.post(END, {"roomId": "r1"})
        assert response.status_code == 200
        assert response.json() == "Recording ended successfully"
        assert not sandbox.recording_running("r1")
        assert api.post(START, {"roomId": "r1"}).status_code == 200

    def test_an_end_with_nothing_running_is_refused_with_4012(self, api):
        """Stopping a room that records nothing answers 400 with code 4012."""
        response = api.post(END, {"roomId": "r1"})
        assert response.status_code == 400
        assert response.json()["code"] == 4012

    def test_an_end_may_carry_the_room_id_as_the_node_sdk_sends_it(self, api):
        """The official Node SDK's stop body {roomId, id} is accepted."""
        api.post(START, {"roomId": "r1"})
        assert api.post(END, {"roomId": "r1", "id": "r1"}).status_code == 200

    def test_rooms_are_independent(self, api, sandbox):
        """A recording in one room does not refuse a start in another."""
        api.post(START, {"roomId": "r1"})
        assert api.post(START, {"roomId": "r2"}).status_code == 200
        assert sandbox.recording_running("r2")


class TestTrackRecording:
    def test_a_track_start_and_stop_answer_the_documented_strings(self, api, sandbox):
        """Track start and stop answer 200 with the docs' strings, trailing dot included."""
        started = api.post(TRACK_START, {**TRACK, "fileFormat": "webm", "bucketDirPath": "b"})
        assert started.json() == "track recording started successfully."
        assert sandbox.track_running("r1", "p1", "audio")
        stopped = api.post(TRACK_STOP, TRACK)
        assert stopped.json() == "track recording ended successfully."
        assert not sandbox.track_running("r1", "p1", "audio")

    def test_the_same_track_twice_is_refused_as_already_running(self, api):
        """A second start of the same participant and kind answers 400 with code 4011."""
        api.post(TRACK_START, TRACK)
        response = api.post(TRACK_START, TRACK)
        assert response.status_code == 400
        assert response.json()["code"] == 4011
        assert "already running" in response.json()["message"]

    def test_another_kind_of_the_same_participant_is_a_separate_recording(self, api):
        """Audio and video of one participant record independently."""
        api.post(TRACK_START, TRACK)
        assert api.post(TRACK_START, {**TRACK, "kind": "video"}).status_code == 200

    def test_a_stop_of_a_kind_that_was_not_started_is_refused_with_4012(self, api, sandbox):
        """The stop's kind must match the started one."""
        api.post(TRACK_START, TRACK)
        response = api.post(TRACK_STOP, {**TRACK, "kind": "video"})
        assert response.status_code == 400
        assert response.json()["code"] == 4012
        assert sandbox.track_running("r1", "p1", "audio")


class TestLiveSessions:
    def test_without_a_live_session_a_start_is_refused_with_4003(self, start_server, http, mint):
        """When rooms are not live by default, a start needs make_live first."""
        server = start_server(rooms_live_by_default=False)
        headers = {"Authorization": mint()}
        response = http.post(server.url + START, json={"roomId": "r1"}, headers=headers)
        assert response.status_code == 400
        assert response.json()["code"] == 4003
        assert "no ongoing session" in response.json()["message"].lower()
        server.sandbox.make_live("r1")
        response = http.post(server.url + START, json={"roomId": "r1"}, headers=headers)
        assert response.status_code == 200

    def test_a_meeting_scheduled_later_is_live_only_from_its_start(
        self, start_server, http, mint, clock
    ):
        """make_live(at=...) makes the room live once the sandbox clock reaches ``at``."""
        server = start_server(rooms_live_by_default=False)
        server.sandbox.make_live("r1", at=clock.now + 60)
        headers = {"Authorization": mint()}
        assert (
            http.post(server.url + START, json={"roomId": "r1"}, headers=headers).json()["code"]
            == 4003
        )
        clock.advance(60)
        response = http.post(server.url + START, json={"roomId": "r1"}, headers=headers)
        assert response.status_code == 200

    def test_ending_the_session_stops_its_recordings_and_refuses_a_stop(self, api, sandbox):
        """end_session stops everything in the room; a stop after it answers 4003."""
        api.post(START, {"roomId": "r1"})
        api.post(TRACK_START, TRACK)
        sandbox.end_session("r1")
        assert not sandbox.recording_running("r1")
        assert not sandbox.track_running("r1", "p1", "audio")
        assert api.post(END, {"roomId": "r1"}).json()["code"] == 4003
        assert api.post(TRACK_STOP, TRACK).json()["code"] == 4003
