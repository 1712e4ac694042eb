"""The durable schedule in Redis and the dispatcher that publishes from it."""

from __future__ import annotations

import threading

import pytest
import redis

from worker.dispatcher import Dispatcher
from worker.schedule import Delivery, Schedule
from worker.state import State


def delivery(job_id: str, due: float) -> Delivery:
    return Delivery(job_id, "recq.start_recording", {"roomId": job_id}, due)


class TestSchedule:
    def test_only_what_is_due_is_taken_soonest_first(self, schedule, clock):
        """Entries due later stay; pending() lists everything by due time."""
        schedule.add(delivery("later", clock.now + 60))
        schedule.add(delivery("now", clock.now))
        schedule.add(delivery("earlier", clock.now - 5))
        assert [d.job_id for d in schedule.pending()] == ["earlier", "now", "later"]
        assert [d.job_id for d in schedule.take_due()] == ["earlier", "now"]
        assert [d.job_id for d in schedule.pending()] == ["later"]

    def test_each_due_entry_is_taken_by_exactly_one_of_many_dispatchers(
        self, schedule, redis_url, namespace, clock
    ):
        """Eight takers on their own connections race for 500 due entries: no entry twice."""
        for n in range(500):
            schedule.add(delivery(f"j{n}", clock.now - n))
        taken: list[str] = []
        lock = threading.Lock()

        def take() -> None:
            client = redis.Redis.from_url(redis_url)
            mine = Schedule(client, namespace=namespace, clock=clock)
            while batch := mine.take_due(limit=7):
                with lock:
                    taken.extend(d.job_id for d in batch)
            client.close()

        threads = [threading.Thread(target=take) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(taken) == sorted(f"j{n}" for n in range(500))

    def test_an_entry_whose_dispatcher_died_comes_back_after_its_lease(self, schedule, clock):
        """Taken but never marked done: after the 10 s lease it is due again."""
        schedule.add(delivery("j1", clock.now))
        [taken] = schedule.take_due()
        assert schedule.recover() == 0
        clock.now += 10.1
        assert schedule.recover() == 1
        assert [d.job_id for d in schedule.take_due()] == ["j1"]
        assert taken.job == {"roomId": "j1"}

    def test_a_done_entry_is_forgotten_unless_it_was_scheduled_again(self, schedule, clock):
        """A job that put itself back on the schedule while being published keeps its new entry."""
        schedule.add(delivery("j1", clock.now))
        schedule.take_due()
        schedule.add(delivery("j1", clock.now + 30))
        schedule.done("j1")
        assert [(d.job_id, d.due) for d in schedule.pending()] == [("j1", clock.now + 30)]

    def test_cancel_removes_a_pending_or_taken_entry(self, schedule, clock):
        """A cancelled entry is never published, even one a dispatcher is about to read."""
        schedule.add(delivery("pending", clock.now + 5))
        assert schedule.cancel("pending") is True
        assert schedule.cancel("pending") is False
        schedule.add(delivery("taken", clock.now))
        schedule.take_due()
        schedule.cancel("taken")
        clock.now += 11
        schedule.recover()
        assert schedule.take_due() == []
        assert schedule.pending() == []

    def test_replace_swaps_an_unchanged_pending_entry_only(self, schedule, clock):
        """Reschedule's compare-and-set: a stale or taken entry is not overwritten."""
        old = delivery("j1", clock.now + 60)
        schedule.add(old)
        new = Delivery("j1", old.task, {"roomId": "j1", "moved": True}, clock.now + 120)
        assert schedule.replace(old, new) is True
        assert schedule.get("j1") == new
        assert schedule.replace(old, delivery("j1", clock.now + 5)) is False
        clock.now += 120
        schedule.take_due()
        assert schedule.get("j1") is None
        assert schedule.replace(new, old) is False

    def test_replace_records_the_job_in_the_same_step_unless_it_ended(self, schedule, store, clock):
        """With the job's state write, the move and the record are one step; a job that has
        ended is neither recorded nor moved."""
        old = delivery("j1", clock.now + 60)
        schedule.add(old)
        new = delivery("j1", clock.now + 120)
        write = store.write_call("j1", State.SCHEDULED, unless_ended=True)
        assert schedule.replace(old, new, record=write) is True
        assert store.get("j1").state is State.SCHEDULED
        store.transition("j1", State.CANCELLED)
        write = store.write_call("j1", State.SCHEDULED, unless_ended=True)
        assert schedule.replace(new, old, record=write) is False
        assert (schedule.get("j1"), store.get("j1").state) == (new, State.CANCELLED)


class TestDispatcher:
    def test_a_tick_publishes_what_is_due_and_marks_it_done(self, schedule, clock):
        published: list[str] = []
        schedule.add(delivery("due", clock.now))
        schedule.add(delivery("later", clock.now + 1))
        dispatcher = Dispatcher(schedule, lambda d: published.append(d.job_id))
        assert dispatcher.tick() == 1
        assert published == ["due"]
        clock.now += 11
        assert dispatcher.tick() == 1  # nothing comes back: "due" was done
        assert published == ["due", "later"]

    def test_a_failed_publication_is_retried_after_the_lease(self, schedule, clock):
        """The broker refused: the entry stays taken, then comes back and is published."""
        schedule.add(delivery("j1", clock.now))
        calls: list[str] = []

        def flaky(entry: Delivery) -> None:
            calls.append(entry.job_id)
            if len(calls) == 1:
                raise ConnectionError("broker away")

        dispatcher = Dispatcher(schedule, flaky)
        with pytest.raises(ConnectionError):
            dispatcher.tick()
        assert dispatcher.tick() == 0
        clock.now += 10.1
        assert dispatcher.tick() == 1
        assert calls == ["j1", "j1"]
