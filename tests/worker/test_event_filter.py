"""Which events `recq events --type/--job` shows."""

from __future__ import annotations

from worker.event_log import EventFilter


def _event(event_type: str, subject: str, batch_id: str | None = None) -> dict[str, object]:
    data = {"batchId": batch_id} if batch_id else {}
    return {"type": event_type, "subject": subject, "data": data}


class TestEventFilter:
    def test_no_filter_shows_everything(self):
        """Without --type or --job every event passes."""
        assert EventFilter()(_event("recording.started", "a"))

    def test_types_are_shell_patterns_any_of_which_matches(self):
        """--type recording.* --type *.failed keeps both families, and nothing else."""
        wanted = EventFilter(types=("recording.*", "*.failed"))
        assert wanted(_event("recording.started", "a"))
        assert wanted(_event("track_recording.failed", "a"))
        assert not wanted(_event("track_recording.started", "a"))

    def test_a_job_keeps_its_own_events_and_its_batch_children(self):
        """--job BATCH shows the batch's events and its children's."""
        wanted = EventFilter(jobs=("b1",))
        assert wanted(_event("batch.started", "b1"))
        assert wanted(_event("track_recording.started", "b1:audio:p1", batch_id="b1"))
        assert not wanted(_event("recording.started", "other"))

    def test_a_job_keeps_its_stop_job_s_events_and_its_children_s_stops(self):
        """Following a start with stopAt shows the stop recq made for it; following a batch,
        each child's stop too. Another job whose id begins alike is not shown."""
        assert EventFilter(jobs=("j1",))(_event("recording.stopped", "j1:stop"))
        wanted = EventFilter(jobs=("b1",))
        assert wanted(_event("track_recording.stopped", "b1:audio:p1:stop"))
        assert wanted(_event("track_recording.stopped", "b1:screen_audio:p%3A2:stop"))
        assert not wanted(_event("recording.started", "b1:other"))
        assert not wanted(_event("recording.stopped", "b10:stop"))

    def test_a_job_id_with_colons_does_not_bring_in_another_job_s_stop(self):
        """jobIds may hold ':' (crm-7f3a9c:meeting-42): --job crm-7f3a9c shows neither that job
        nor its stop, which only look like a batch child's."""
        wanted = EventFilter(jobs=("crm-7f3a9c",))
        assert not wanted(_event("recording.started", "crm-7f3a9c:meeting-42"))
        assert not wanted(_event("recording.stopped", "crm-7f3a9c:meeting-42:stop"))

    def test_jobs_given_several_times_are_all_kept(self):
        """--job a --job b shows both jobs' events."""
        wanted = EventFilter(jobs=("a", "b"))
        assert wanted(_event("recording.started", "a"))
        assert wanted(_event("recording.started", "b"))
        assert not wanted(_event("recording.started", "c"))
