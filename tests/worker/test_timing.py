"""A job's times: when it is early, held until it is due, and when a start is too late."""

from __future__ import annotations

from worker.timing import EARLY_TOLERANCE, Timing

NOW = 1_900_000_000.0


class TestEarly:
    def test_a_job_with_no_time_is_never_early(self):
        assert not Timing().early(NOW)

    def test_a_job_due_within_the_clocks_tolerance_runs_at_once(self):
        assert not Timing(due=NOW + EARLY_TOLERANCE).early(NOW)
        assert not Timing(due=NOW - 60).early(NOW)

    def test_a_job_due_later_than_the_tolerance_is_early(self):
        assert Timing(due=NOW + EARLY_TOLERANCE + 0.001).early(NOW)

    def test_a_start_is_held_until_its_start_at_and_a_stop_until_its_stop_at(self):
        start = Timing.of_start(
            {"startAt": "2030-01-31T09:30:00Z", "stopAt": "2030-01-31T10:30:00Z"}
        )
        stop = Timing.of_stop({"stopAt": "2030-01-31T10:30:00Z"})
        assert start.early(start.due - 5)
        assert not start.early(start.due)
        assert stop.due == start.stop_at
        assert stop.early(stop.due - 5)
        assert not stop.early(stop.due)


class TestDeadline:
    def test_a_scheduled_start_without_a_deadline_may_start_until_its_grace_ends(self):
        timing = Timing.of_start({"startAt": "2030-01-31T09:30:00Z"}, grace=600)
        assert not timing.past_deadline(timing.due + 600)
        assert timing.past_deadline(timing.due + 600.001)

    def test_a_start_now_has_no_deadline(self):
        assert not Timing.of_start({}).past_deadline(NOW)
