"""The `recq` command line, run as a user runs it: its own process, real Redis, real sandbox."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from worker.batches import Batches
from worker.cli import WORKER_DEFAULTS, requested_pool
from worker.errors import ErrorInfo
from worker.event_log import EventLog
from worker.jobs import START_RECORDING
from worker.processes import stop_process
from worker.redis_server import free_port, redis_server_binary, throwaway_redis
from worker.sandbox import DEFAULT_API_KEY, DEFAULT_SECRET
from worker.state import JobStore, State

pytestmark = pytest.mark.integration

ROOM_JOB = {"roomId": "cli-room", "config": {"layout": {"type": "GRID", "gridSize": 2}}}
GRID_OF_FIVE = {"roomId": "cli-room", "config": {"layout": {"gridSize": 5}}}


@pytest.fixture
def env(redis_url, namespace, sandbox_server) -> dict[str, str]:
    """The environment of a user whose recq points at this test's Redis and sandbox."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("VIDEOSDK_", "RECQ_"))}
    return {
        **clean,
        "CELERY_BROKER_URL": redis_url,
        "RECQ_NAMESPACE": namespace,
        "RECQ_QUEUE": namespace,
        "VIDEOSDK_API_KEY": DEFAULT_API_KEY,
        "VIDEOSDK_SECRET": DEFAULT_SECRET,
        "VIDEOSDK_API_ENDPOINT": sandbox_server.url,
    }


def python(*args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """This interpreter run with ``args``, its output captured (60 s at most)."""
    return subprocess.run(
        [sys.executable, *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def recq(
    *args: str, env: Mapping[str, str], stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        input=stdin,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def worker_process(env) -> Iterator[subprocess.Popen[str]]:
    """`recq worker` running as its own process; stopped with SIGTERM afterwards."""
    process = subprocess.Popen(
        [sys.executable, "-m", "worker", "worker", "--concurrency", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield process
    stop(process)


def stop(process: subprocess.Popen[Any]) -> None:
    stop_process(process, grace=30)
    if process.stderr:
        process.stderr.close()


def wait_for_json_state(job_id: str, env: Mapping[str, str], timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        result = recq("status", job_id, "--json", env=env)
        if result.returncode == 0:
            state = json.loads(result.stdout)
            if state["state"] in ("succeeded", "failed"):
                return state
        time.sleep(0.2)
    pytest.fail(f"job {job_id} did not end; last state {state}")


class TestHelp:
    def test_help_names_every_command_and_the_configuration(self):
        """`recq --help` lists the commands and the environment variables."""
        result = recq("--help", env=os.environ)
        assert result.returncode == 0
        for word in (
            "worker",
            "enqueue",
            "status",
            "events",
            "schedule",
            "cancel",
            "reschedule",
            "fake-api",
            "dev",
        ):
            assert word in result.stdout
        assert "VIDEOSDK_API_KEY" in result.stdout

    def test_enqueue_help_explains_the_input(self):
        """`recq enqueue --help` says it takes one job or JSON lines and publishes all or none."""
        result = recq("enqueue", "--help", env=os.environ)
        assert "JSON lines" in result.stdout
        assert "nothing of the input is published" in result.stdout


class TestEnqueue:
    def test_a_job_file_is_published_and_its_id_printed(self, env, tmp_path, redis_client):
        """One JSON job in a file: its id is printed, its state is queued, one message waits."""
        path = tmp_path / "job.json"
        path.write_text(json.dumps({**ROOM_JOB, "jobId": "cli-1"}))
        result = recq("enqueue", "start-recording", str(path), env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["cli-1"]
        assert redis_client.llen(env["RECQ_QUEUE"]) == 1
        status = recq("status", "cli-1", "--json", env=env)
        assert json.loads(status.stdout)["state"] == "queued"

    def test_json_lines_print_one_id_a_line(self, env, redis_client):
        """Three jobs on standard input give three ids in order."""
        lines = "\n".join(json.dumps({**ROOM_JOB, "jobId": f"line-{n}"}) for n in range(3))
        result = recq("enqueue", "start-recording", "-", env=env, stdin=lines + "\n")
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["line-0", "line-1", "line-2"]
        assert redis_client.llen(env["RECQ_QUEUE"]) == 3

    def test_a_grid_of_five_is_refused_by_name_and_nothing_is_published(self, env, redis_client):
        """An invalid second line fails the whole input, naming line, field and reason."""
        lines = f"{json.dumps(ROOM_JOB)}\n{json.dumps(GRID_OF_FIVE)}\n"
        result = recq("enqueue", "start-recording", "-", env=env, stdin=lines)
        assert result.returncode == 1
        assert "line 2: config.layout.gridSize: must be at most 4 (got 5)" in result.stderr
        assert "nothing was published" in result.stderr
        assert result.stdout == ""
        assert redis_client.llen(env["RECQ_QUEUE"]) == 0

    def test_a_kind_named_as_states_name_it_is_taken_too(self, env, redis_client):
        """`status` says start-track-recording; enqueue takes it as well as track-recording."""
        job = {"roomId": "r", "participantId": "p", "kind": "audio", "jobId": "by-name"}
        result = recq("enqueue", "start-track-recording", "-", env=env, stdin=json.dumps(job))
        assert (result.returncode, result.stdout) == (0, "by-name\n")
        status = json.loads(recq("status", "by-name", "--json", env=env).stdout)
        assert status["kind"] == "start-track-recording"

    def test_a_line_that_is_not_json_is_refused(self, env):
        """Broken JSON is named by its line and nothing is published."""
        result = recq("enqueue", "track-recording", "-", env=env, stdin='{"roomId": \n')
        assert result.returncode == 1
        assert "line 1: not valid JSON" in result.stderr

    @pytest.mark.parametrize("lines", [1, 2], ids=["one-job", "json-lines"])
    def test_json_nested_too_deeply_is_refused_by_line(self, env, lines):
        """Deeper than Python's recursion limit: the line is named, without a traceback."""
        deep = '{"roomId": "r", "metadata": {"a": ' + "[" * 100_000 + "]" * 100_000 + "}}"
        text = "\n".join([json.dumps(ROOM_JOB)] * (lines - 1) + [deep])
        result = recq("enqueue", "start-recording", "-", env=env, stdin=text)
        assert result.returncode == 1
        assert result.stderr == (
            f"recq enqueue: line {lines}: JSON nested too deeply to read\n"
            "recq enqueue: 1 invalid job(s); nothing was published\n"
        )

    def test_every_problem_is_told_even_beside_a_line_that_is_not_json(self, env, redis_client):
        """A line that cannot be read does not hide the others' problems: each is named, in
        line order, and nothing is published."""
        lines = [
            json.dumps(ROOM_JOB),
            json.dumps({"roomid": "r"}),
            json.dumps(GRID_OF_FIVE),
            "{bad",
        ]
        result = recq("enqueue", "start-recording", "-", env=env, stdin="\n".join(lines))
        assert result.returncode == 1
        told = [line.split(":")[1] for line in result.stderr.splitlines()]
        assert told == [
            " line 2",
            " line 2",
            " line 3",
            " line 4",
            " 3 invalid job(s); nothing was published",
        ]
        assert "line 4: not valid JSON" in result.stderr
        assert redis_client.llen(env["RECQ_QUEUE"]) == 0

    def test_two_jobs_under_one_job_id_are_refused(self, env, redis_client):
        """The later line is named: one of the two jobs would otherwise be lost."""
        lines = [json.dumps({"roomId": room, "jobId": "dup"}) for room in ("a", "b")]
        result = recq("enqueue", "start-recording", "-", env=env, stdin="\n".join(lines))
        assert result.returncode == 1
        assert "line 2: jobId: 'dup' is already the jobId of an earlier job here" in result.stderr
        assert redis_client.llen(env["RECQ_QUEUE"]) == 0

    def test_a_key_given_twice_in_one_job_is_refused(self, env):
        """Which of the two values was meant cannot be known."""
        result = recq(
            "enqueue", "start-recording", "-", env=env, stdin='{"roomId": "a", "roomId": "b"}'
        )
        assert result.returncode == 1
        assert "line 1: the key 'roomId' is given twice in one object" in result.stderr

    def test_jobs_pretty_printed_over_several_lines_are_told_once(self, env):
        """jq's default output: one message saying how to give them, not one a line."""
        text = "\n".join(json.dumps({"roomId": room}, indent=2) for room in ("a", "b"))
        result = recq("enqueue", "start-recording", "-", env=env, stdin=text)
        assert result.returncode == 1
        assert result.stderr == (
            "recq enqueue: the jobs are spread over several lines each: give one job a line "
            "(`jq -c` writes them so); nothing was published\n"
        )

    def test_a_line_separator_inside_a_string_does_not_end_the_line(self, env):
        """U+2028 may stand unescaped in a JSON string (as json.dumps(ensure_ascii=False)
        writes it): only a newline ends a job's line."""
        jobs = [{"roomId": "a", "metadata": {"note": "one\u2028two"}}, {"roomId": "b"}]
        text = "\n".join(json.dumps(job, ensure_ascii=False) for job in jobs)
        result = recq("enqueue", "start-recording", "-", env=env, stdin=text)
        assert (result.returncode, len(result.stdout.split())) == (0, 2), result.stderr

    def test_input_that_is_not_utf8_is_named_by_its_lines_with_every_other_problem(
        self, env, tmp_path
    ):
        """Every line that is not UTF-8 is named, each by its first bad byte, beside the other
        lines' problems (only the first bad byte of the input was named)."""
        path = tmp_path / "jobs.jsonl"
        path.write_bytes(
            b'{"roomId": "a"}\n{"roomId": "\xff"}\n{"roomId": 7}\n{"r": "\xe9t\xe9"}\n'
        )
        result = recq("enqueue", "start-recording", str(path), env=env)
        assert result.returncode == 1
        assert result.stderr == (
            "recq enqueue: line 2: not UTF-8 text (byte 0xff)\n"
            "recq enqueue: line 3: roomId: must be a string (got integer)\n"
            "recq enqueue: line 4: not UTF-8 text (byte 0xe9)\n"
            "recq enqueue: 3 invalid job(s); nothing was published\n"
        )

    def test_a_single_object_that_is_not_utf8_is_refused(self, env, tmp_path):
        """Spread over lines, one job with a byte that is not UTF-8 is named, not published."""
        path = tmp_path / "job.json"
        path.write_bytes(b'{\n  "roomId": "a",\n  "metadata": {"who": "\xff"}\n}\n')
        result = recq("enqueue", "start-recording", str(path), env=env)
        assert result.returncode == 1
        assert result.stderr == (
            "recq enqueue: line 3: not UTF-8 text (byte 0xff)\n"
            "recq enqueue: 1 invalid job(s); nothing was published\n"
        )

    def test_a_missing_file_is_a_clear_error(self, env, tmp_path):
        """A path that does not exist is named, without a traceback."""
        result = recq("enqueue", "start-recording", str(tmp_path / "nope.json"), env=env)
        assert result.returncode == 1
        assert "cannot read" in result.stderr
        assert "Traceback" not in result.stderr


class TestStatusAndEvents:
    def test_an_unknown_id_is_an_error(self, env):
        """`recq status` of an id nobody enqueued exits 1 and says so."""
        result = recq("status", "no-such-job", env=env)
        assert result.returncode == 1
        assert "no job 'no-such-job'" in result.stderr

    def test_a_message_refused_before_its_job_was_read_shows_no_empty_target(
        self, env, redis_url, namespace
    ):
        """Its record has the kind, and a target with an empty roomId: it printed `roomId=`."""
        store = JobStore(redis.Redis.from_url(redis_url), namespace=namespace)
        error = ErrorInfo("malformed_message", "args is not a list")
        target = START_RECORDING.target({})
        store.transition("bad-1", State.FAILED, kind="start-recording", target=target, error=error)
        lines = recq("status", "bad-1", env=env).stdout.splitlines()
        assert lines[0] == "bad-1: failed (start-recording)"

    def test_a_job_waiting_for_a_rate_limit_slot_says_so_and_until_when(
        self, env, redis_url, namespace
    ):
        """Back on the schedule for want of a slot it is still `queued`: the status says why it
        has not run, and when its turn comes. It used to show `queued` and nothing more."""
        store = JobStore(redis.Redis.from_url(redis_url), namespace=namespace)
        store.transition("slow-1", State.QUEUED, extra={"slotAt": 1_900_000_000.0})
        lines = recq("status", "slow-1", env=env).stdout.splitlines()
        assert lines[0] == "slow-1: queued"
        assert lines[2] == (
            "  rate limit: no call slot free (RECQ_RATE_LIMIT); "
            "its turn is at 2030-03-17T17:46:40.000Z"
        )

    def test_a_batch_failed_part_way_through_its_fan_out_says_how_many_children_it_made(
        self, env, redis_url, namespace
    ):
        """Its children not made would be counted pending for ever: the status says the fan-out
        made two of four, beside the error that says why it stopped."""
        client = redis.Redis.from_url(redis_url)
        batches = Batches(client, namespace=namespace)
        batches.create("b-cut", BULK_JOB, total=4)
        batches.advance("b-cut", 2)
        error = ErrorInfo("too_many_deliveries", "its fan-out published 2 of 4 children, ...")
        store = JobStore(client, namespace=namespace)
        store.transition("b-cut", State.FAILED, kind="bulk-track-recording", error=error)
        lines = recq("status", "b-cut", env=env).stdout.splitlines()
        assert lines[2:4] == [
            "  children: 4 total, 0 succeeded, 0 failed, 4 pending",
            "  fan-out: 2 of 4 children made so far",
        ]
        state = json.loads(recq("status", "b-cut", "--json", env=env).stdout)
        assert (state["published"], len(state["children"])) == (2, 4)

    def test_a_message_of_an_unknown_task_shows_its_state_and_error_alone(
        self, env, redis_url, namespace
    ):
        """Recorded with neither kind nor target, it printed 'failed (None; )'."""
        store = JobStore(redis.Redis.from_url(redis_url), namespace=namespace)
        error = ErrorInfo("unknown_task", "no task is named 'recq.start_recordings'")
        store.transition("typo-1", State.FAILED, error=error)
        result = recq("status", "typo-1", env=env)
        lines = result.stdout.splitlines()
        assert lines[0] == "typo-1: failed"
        assert lines[-1] == "  error: unknown_task: no task is named 'recq.start_recordings'"

    def test_a_state_store_on_a_unix_socket_is_read(self, env, tmp_path):
        """RECQ_REDIS_URL=unix://... is accepted by the settings, and every command then
        failed with a TypeError (TCP keepalive asked of a Unix socket's connection)."""
        socket_path = tmp_path / "redis.sock"
        unix_only = ["--port", "0", "--unixsocket", str(socket_path), "--save", ""]
        server = subprocess.Popen([redis_server_binary(), *unix_only], stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while not socket_path.exists():
                assert time.monotonic() < deadline, "redis-server did not open its socket"
                time.sleep(0.05)
            result = recq("status", "nope", env={**env, "RECQ_REDIS_URL": f"unix://{socket_path}"})
        finally:
            stop_process(server)
        assert (result.returncode, result.stderr) == (
            1,
            "recq status: no job 'nope' (unknown, or its state expired)\n",
        )

    def test_a_job_runs_through_a_worker_process(self, env, worker_process, sandbox):
        """Enqueued by the CLI, run by `recq worker`, reported by status and events."""
        result = recq("enqueue", "start-recording", "-", env=env, stdin=json.dumps(ROOM_JOB))
        job_id = result.stdout.strip()
        state = wait_for_json_state(job_id, env)
        assert state["state"] == "succeeded"
        assert state["id"] == job_id
        assert "error" not in state
        human = recq("status", job_id, env=env)
        assert f"{job_id}: succeeded" in human.stdout
        events = [json.loads(line) for line in recq("events", env=env).stdout.splitlines()]
        assert [(e["type"], e["subject"]) for e in events] == [("recording.started", job_id)]
        assert len(sandbox.accepted("/v2/recordings/start")) == 1

    def test_a_failed_job_shows_its_error(self, env, worker_process, sandbox):
        """A job VideoSDK rejects reports state failed and the error in `status --json`."""
        from worker.sandbox import Fault  # noqa: PLC0415

        sandbox.inject(Fault(status=403, body='{"message": "add-on disabled", "code": 4021}'))
        result = recq("enqueue", "start-recording", "-", env=env, stdin=json.dumps(ROOM_JOB))
        state = wait_for_json_state(result.stdout.strip(), env)
        assert state["state"] == "failed"
        assert state["error"]["reason"] == "upstream_rejected"
        assert state["error"]["status"] == 403

    def test_events_are_filtered_by_type_and_by_job(self, env, worker_process, sandbox):
        """`recq events --type` keeps matching types, `--job` one job's events."""
        from worker.sandbox import Fault  # noqa: PLC0415

        sandbox.inject(Fault(status=403))
        ids = []
        for room in ("room-a", "room-b"):
            result = recq(
                "enqueue", "start-recording", "-", env=env, stdin=json.dumps({"roomId": room})
            )
            ids.append(result.stdout.strip())
            wait_for_json_state(ids[-1], env)

        def shown(*args: str) -> list[tuple[str, str]]:
            lines = recq("events", *args, env=env).stdout.splitlines()
            return [(e["type"], e["subject"]) for e in map(json.loads, lines)]

        assert shown("--type", "*.failed") == [("recording.failed", ids[0])]
        assert shown("--job", ids[1]) == [("recording.started", ids[1])]
        assert len(shown("--job", ids[0], "--job", ids[1])) == 2
        assert shown("--type", "recording.*", "--type", "batch.*") == [
            ("recording.failed", ids[0]),
            ("recording.started", ids[1]),
        ]


class TestPipes:
    def test_output_into_a_closed_pipe_stops_quietly(self, env):
        """`recq status ID | head -1`: the reader has gone; no traceback, the exit of a
        process a broken pipe stops (141). Output buffered as usual, not written at once."""
        env = {k: v for k, v in env.items() if k != "PYTHONUNBUFFERED"}
        job = json.dumps({**ROOM_JOB, "jobId": "piped"})
        assert recq("enqueue", "start-recording", "-", env=env, stdin=job).returncode == 0
        read, write = os.pipe()
        os.close(read)
        with os.fdopen(write, "w") as closed:
            result = subprocess.run(
                [sys.executable, "-m", "worker", "status", "piped"],
                stdout=closed,
                stderr=subprocess.PIPE,
                env=env,
                text=True,
                timeout=60,
                check=False,
            )
        assert (result.returncode, result.stderr) == (141, "")


class TestSchedulingCommands:
    def enqueue_later(self, env, job_id, start_at="2030-01-31T10:00:00+01:00"):
        job = {**ROOM_JOB, "jobId": job_id, "startAt": start_at}
        result = recq("enqueue", "start-recording", "-", env=env, stdin=json.dumps(job))
        assert result.returncode == 0, result.stderr

    def test_a_job_due_later_is_scheduled_not_published(self, env, redis_client):
        """Nothing waits on the broker; status shows the job scheduled with its due time."""
        self.enqueue_later(env, "later-1")
        assert redis_client.llen(env["RECQ_QUEUE"]) == 0
        state = json.loads(recq("status", "later-1", "--json", env=env).stdout)
        assert (state["state"], state["dueAt"]) == ("scheduled", "2030-01-31T09:00:00.000Z")
        assert state["deadline"] == "2030-01-31T09:15:00.000Z"
        human = recq("status", "later-1", env=env).stdout
        assert "due: 2030-01-31T09:00:00.000Z" in human

    def test_schedule_list_shows_what_is_coming_soonest_first(self, env):
        """One line a job: due time, id, kind, state, target."""
        self.enqueue_later(env, "second", "2030-02-01T10:00:00Z")
        self.enqueue_later(env, "first", "2030-01-01T10:00:00Z")
        result = recq("schedule", "list", env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [
            "2030-01-01T10:00:00.000Z  first  start-recording  scheduled  roomId=cli-room",
            "2030-02-01T10:00:00.000Z  second  start-recording  scheduled  roomId=cli-room",
        ]
        lines = recq("schedule", "list", "--json", env=env).stdout.splitlines()
        assert json.loads(lines[0])["id"] == "first"

    def test_cancel_drops_a_scheduled_job(self, env):
        """It leaves the schedule and ends cancelled; cancelling again says it already ended."""
        self.enqueue_later(env, "doomed")
        result = recq("cancel", "doomed", env=env)
        assert (result.returncode, result.stdout) == (0, "doomed: cancelled\n")
        assert recq("schedule", "list", env=env).stdout == ""
        again = recq("cancel", "doomed", env=env)
        assert again.returncode == 1
        assert "already ended (cancelled)" in again.stderr

    def test_cancel_says_when_it_stops_a_recording_that_may_have_started(self, env, sandbox):
        """The job's one attempt started the recording but was answered 503: it waits to retry.
        Cancelled, it gets its stop at once, and the command says so."""
        from worker.sandbox import Fault  # noqa: PLC0415

        sandbox.inject(Fault(status=503, applies=True))
        quick = {**env, "RECQ_RETRY_ATTEMPTS": "1", "RECQ_REQUEUE_DELAY": "60"}
        job = {**ROOM_JOB, "jobId": "maybe-started"}
        assert (
            recq("enqueue", "start-recording", "-", env=quick, stdin=json.dumps(job)).returncode
            == 0
        )
        process = subprocess.Popen(
            [sys.executable, "-m", "worker", "worker", "--concurrency", "1"],
            env=quick,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while (
                json.loads(recq("status", "maybe-started", "--json", env=quick).stdout)["state"]
                != "retrying"
            ):
                assert time.monotonic() < deadline, "the job never waited to retry"
                time.sleep(0.2)
            result = recq("cancel", "maybe-started", env=quick)
        finally:
            stop(process)
        assert result.stdout == (
            "maybe-started: cancelled\n  an earlier attempt VideoSDK did not answer may have "
            "started its recording: maybe-started:stop stops it now\n"
        )

    def test_a_started_recording_keeps_running_after_cancel_and_ends_on_stop_at_now(
        self, env, worker_process, sandbox
    ):
        """Cancel on a start that succeeded drops its pending stop, and says how to end the
        recording; reschedule --stop-at now does end it."""
        job = {**ROOM_JOB, "jobId": "live-1", "stopAt": "2099-01-01T00:00:00Z"}
        recq("enqueue", "start-recording", "-", env=env, stdin=json.dumps(job))
        wait_for_json_state("live-1", env)
        cancelled = recq("cancel", "live-1", env=env)
        assert (cancelled.returncode, cancelled.stdout) == (
            0,
            "live-1:stop: cancelled (the pending stop of live-1; its recording keeps running "
            "until recq reschedule live-1 --stop-at TIME)\n",
        )
        assert sandbox.recording_running("cli-room")
        moved = recq("reschedule", "live-1", "--stop-at", "now", env=env)
        assert moved.returncode == 0, moved.stderr
        assert moved.stdout.startswith("live-1:stop: scheduled for 20")
        assert wait_for_json_state("live-1:stop", env)["state"] == "succeeded"
        assert not sandbox.recording_running("cli-room")
        assert json.loads(recq("status", "live-1", "--json", env=env).stdout)["stopJobId"] == (
            "live-1:stop"
        )

    def test_cancel_of_an_unknown_job_is_an_error(self, env):
        result = recq("cancel", "ghost", env=env)
        assert result.returncode == 1
        assert "no job 'ghost'" in result.stderr

    def test_reschedule_moves_the_job_and_validates_the_new_times(self, env):
        """The new startAt takes effect; a stopAt before it is refused by name."""
        self.enqueue_later(env, "moved")
        result = recq("reschedule", "moved", "--start-at", "2030-03-01T08:00:00Z", env=env)
        assert (result.returncode, result.stdout) == (
            0,
            "moved: scheduled for 2030-03-01T08:00:00.000Z\n",
        )
        bad = recq("reschedule", "moved", "--stop-at", "2030-03-01T07:00:00Z", env=env)
        assert bad.returncode == 1
        assert "stopAt: must be after startAt" in bad.stderr
        assert recq("schedule", "list", env=env).stdout.startswith(
            "2030-03-01T08:00:00.000Z  moved"
        )

    def test_reschedule_needs_a_time(self, env):
        result = recq("reschedule", "moved", env=env)
        assert result.returncode == 2
        assert "--start-at" in result.stderr


class TestRedisAway:
    @pytest.mark.parametrize(
        "args",
        [
            ("status", "j"),
            ("events",),
            ("dead", "list"),
            ("dead", "replay", "--all"),
            ("schedule", "list"),
            ("cancel", "j"),
            ("reschedule", "j", "--start-at", "2030-01-31T10:00:00Z"),
        ],
        ids=" ".join,
    )
    def test_a_redis_that_refuses_is_one_line_and_exit_1(self, env, args):
        """Every command that reads or writes Redis says so in one line, not a traceback."""
        down = f"redis://127.0.0.1:{free_port()}/0"
        result = recq(*args, env={**env, "CELERY_BROKER_URL": down})
        assert result.returncode == 1
        assert result.stderr.startswith(
            f"recq {args[0]}: Redis (RECQ_REDIS_URL, or CELERY_BROKER_URL when that is Redis) "
            "failed: ConnectionError: "
        )
        assert "Connection refused" in result.stderr
        assert len(result.stderr.splitlines()) == 1

    @pytest.mark.parametrize("args", [("status", "j"), ("enqueue", "start-recording", "-")])
    def test_a_redis_that_never_answers_is_an_error_within_seconds(self, env, silent_port, args):
        """A Redis that accepts connections and stays silent: exit 1 well within a minute (the
        worker's patience, 30 s reads retried, would hold a command for minutes)."""
        hung = {**env, "CELERY_BROKER_URL": f"redis://127.0.0.1:{silent_port}/0"}
        result = recq(*args, env=hung, stdin=json.dumps(ROOM_JOB), timeout=60)
        assert result.returncode == 1
        assert "Timeout reading from socket" in result.stderr

    def test_events_follow_rides_over_a_redis_restart(self, env):
        """A follower runs for long: it keeps a worker's patience, reconnects, and prints the
        events published after the restart (the quick commands' one retry would end it)."""
        with throwaway_redis() as server:
            follower = subprocess.Popen(
                [sys.executable, "-m", "worker", "events", "--follow"],
                env={**env, "CELERY_BROKER_URL": server.url},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                time.sleep(2)  # reading the log
                server.stop()
                time.sleep(3)  # down for longer than one quick retry
                server.start()
                with redis.Redis.from_url(server.url) as client:
                    log = EventLog(client, namespace=env["RECQ_NAMESPACE"])
                    log.publish({"type": "recording.started", "id": "after-restart"})
                assert follower.stdout is not None
                ready, _, _ = select.select([follower.stdout], [], [], 30)
                assert ready, "the follower printed nothing within 30 s"
                assert json.loads(follower.stdout.readline())["id"] == "after-restart"
            finally:
                stop(follower)
                if follower.stdout:
                    follower.stdout.close()


BULK_JOB = {"roomId": "cli-room", "participants": ["ann", "ben"], "kinds": ["audio", "video"]}


class TestBulkCommands:
    def test_wait_shows_progress_and_exits_0_when_every_child_succeeded(
        self, env, worker_process, sandbox
    ):
        """The batch id on stdout; progress lines on stderr (not a terminal) to 4/4."""
        job = json.dumps({**BULK_JOB, "jobId": "cli-batch"})
        result = recq("enqueue", "bulk-track-recording", "-", "--wait", env=env, stdin=job)
        assert result.returncode == 0, result.stderr
        assert result.stdout == "cli-batch\n"
        last = result.stderr.splitlines()[-1]
        assert last.startswith("cli-batch [##############################] 4/4")
        assert "succeeded 4  failed 0  pending 0" in last

    def test_status_json_gives_the_counts_and_every_child(self, env, worker_process, sandbox):
        job = json.dumps({**BULK_JOB, "jobId": "cli-batch"})
        recq("enqueue", "bulk-track-recording", "-", "--wait", env=env, stdin=job)
        state = json.loads(recq("status", "cli-batch", "--json", env=env).stdout)
        assert state["state"] == "succeeded"
        assert state["counts"] == {"total": 4, "succeeded": 4, "failed": 0, "pending": 0}
        assert [(c["jobId"], c["state"]) for c in state["children"]] == [
            ("cli-batch:audio:ann", "succeeded"),
            ("cli-batch:video:ann", "succeeded"),
            ("cli-batch:audio:ben", "succeeded"),
            ("cli-batch:video:ben", "succeeded"),
        ]
        human = recq("status", "cli-batch", env=env).stdout
        assert "children: 4 total, 4 succeeded, 0 failed, 0 pending" in human

    def test_a_batch_s_recordings_end_together_on_stop_at_now(self, env, worker_process, sandbox):
        """One command stops every child's recording; a second finds nothing left to stop."""
        job = json.dumps({**BULK_JOB, "jobId": "cli-stop"})
        recq("enqueue", "bulk-track-recording", "-", "--wait", env=env, stdin=job)
        assert sandbox.track_running("cli-room", "ann", "audio")
        moved = recq("reschedule", "cli-stop", "--stop-at", "now", env=env)
        assert moved.returncode == 0, moved.stderr
        stops = [line.split(": ")[0] for line in moved.stdout.splitlines()]
        assert stops == [
            "cli-stop:audio:ann:stop",
            "cli-stop:video:ann:stop",
            "cli-stop:audio:ben:stop",
            "cli-stop:video:ben:stop",
        ]
        for stop_id in stops:
            assert wait_for_json_state(stop_id, env)["state"] == "succeeded"
        assert not any(
            sandbox.track_running("cli-room", who, kind)
            for who in ("ann", "ben")
            for kind in ("audio", "video")
        )
        again = recq("reschedule", "cli-stop", "--stop-at", "now", env=env)
        assert again.returncode == 1
        assert "every child already ended, with no recording left to stop" in again.stderr

    def test_wait_exits_1_when_children_failed(self, env, worker_process, sandbox):
        """A partially failed batch is not a success for a script waiting on it."""
        from worker.sandbox import Fault  # noqa: PLC0415

        sandbox.inject(Fault(status=400, times=1))
        job = json.dumps({**BULK_JOB, "jobId": "cli-partial"})
        result = recq("enqueue", "bulk-track-recording", "-", "--wait", env=env, stdin=job)
        assert result.returncode == 1
        assert "cli-partial: partially_failed" in result.stderr


class TestDeadCommands:
    def test_dead_letters_are_listed_shown_and_replayed(self, env, worker_process, sandbox):
        """A rejected job shows in `recq dead list`; `replay` runs it again under its id."""
        from worker.sandbox import Fault  # noqa: PLC0415

        sandbox.inject(Fault(status=400, body='{"message": "no such room"}'))
        result = recq("enqueue", "start-recording", "-", env=env, stdin=json.dumps(ROOM_JOB))
        job_id = result.stdout.strip()
        assert wait_for_json_state(job_id, env)["state"] == "failed"
        listed = recq("dead", "list", env=env)
        assert f"{job_id}  recq.start_recording  upstream_rejected" in listed.stdout
        shown = json.loads(recq("dead", "show", job_id, env=env).stdout)
        assert (shown["job"], shown["attempts"]) == (ROOM_JOB, 1)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", shown["failedAt"])
        replayed = recq("dead", "replay", job_id, env=env)
        assert replayed.stdout.split() == [job_id]
        assert wait_for_json_state(job_id, env)["state"] == "succeeded"
        assert recq("dead", "list", env=env).stdout == ""

    def test_a_dead_letter_is_shown_without_its_signature_and_replayed_with_it(
        self, env, worker_process, sandbox
    ):
        """`dead show` and `dead list --json` redact the pre-signed URL's query (and metadata
        quoting one); the letter keeps it whole, so the replay sends it to VideoSDK."""
        from worker.sandbox import Fault  # noqa: PLC0415

        signed = "https://bucket.s3.amazonaws.com/rec.mp4?X-Amz-Signature=abc"
        job = {**ROOM_JOB, "preSignedUrl": signed, "metadata": {"copy": signed}}
        sandbox.inject(Fault(status=400, body='{"message": "no such room"}'))
        result = recq("enqueue", "start-recording", "-", env=env, stdin=json.dumps(job))
        job_id = result.stdout.strip()
        assert wait_for_json_state(job_id, env)["state"] == "failed"
        shown = recq("dead", "show", job_id, env=env).stdout
        listed = recq("dead", "list", "--json", env=env).stdout
        assert (
            json.loads(shown)["job"]["preSignedUrl"]
            == "https://bucket.s3.amazonaws.com/rec.mp4?[redacted]"
        )
        assert "X-Amz-Signature" not in shown + listed
        assert recq("dead", "replay", job_id, env=env).returncode == 0
        assert wait_for_json_state(job_id, env)["state"] == "succeeded"
        assert sandbox.calls[-1].body["preSignedUrl"] == signed

    def test_showing_an_unknown_dead_letter_is_an_error(self, env):
        """`recq dead show` of an id with no letter exits 1 and says so."""
        result = recq("dead", "show", "nope", env=env)
        assert result.returncode == 1
        assert "no dead letter 'nope'" in result.stderr
        replayed = recq("dead", "replay", "nope", env=env)
        assert (replayed.returncode, replayed.stderr) == (
            1,
            "recq dead replay: nope: no dead letter 'nope'\n",
        )


class TestWorkerCommand:
    def test_a_worker_without_credentials_stops_with_a_message(self, env):
        """`recq worker` with no VideoSDK key exits 2 and says which variables to set."""
        bare = {k: v for k, v in env.items() if not k.startswith("VIDEOSDK_")}
        result = recq("worker", env=bare, timeout=30)
        assert result.returncode == 2
        assert "VIDEOSDK_API_KEY and VIDEOSDK_SECRET" in result.stderr
        assert "Traceback" not in result.stderr

    def test_a_heartbeat_file_that_cannot_be_written_stops_the_worker_with_a_message(
        self, env, tmp_path
    ):
        """Exit 2 naming RECQ_HEARTBEAT_FILE, before consuming: the consumer used to restart in a
        loop ("Connection to broker lost") on every beat it could not write."""
        not_a_directory = tmp_path / "plain-file"
        not_a_directory.write_text("")
        where = {**env, "RECQ_HEARTBEAT_FILE": str(not_a_directory / "hb")}
        result = recq("worker", "--concurrency", "1", env=where, timeout=30)
        assert result.returncode == 2
        assert f"RECQ_HEARTBEAT_FILE='{not_a_directory / 'hb'}' cannot be written" in result.stderr
        assert "Traceback" not in result.stderr

    def test_a_metrics_port_another_process_holds_stops_the_worker_with_a_message(
        self, env, tmp_path
    ):
        """Exit 2 naming RECQ_METRICS_PORT: the worker used to log a traceback and run on
        with no metrics (a second worker on a host given the first one's port)."""
        with socket.socket() as taken:
            taken.bind(("0.0.0.0", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            where = {
                **env,
                "RECQ_METRICS_PORT": str(port),
                "RECQ_HEARTBEAT_FILE": str(tmp_path / "hb"),
            }
            result = recq("worker", "--concurrency", "1", env=where, timeout=30)
        assert result.returncode == 2
        assert f"RECQ_METRICS_PORT={port} cannot be served" in result.stderr
        assert "Traceback" not in result.stderr

    def test_a_metrics_address_this_host_lacks_stops_the_worker_with_a_message(self, env, tmp_path):
        """Exit 2 naming RECQ_METRICS_ADDRESS (192.0.2.1 is a documentation address)."""
        where = {
            **env,
            "RECQ_METRICS_PORT": "9808",
            "RECQ_METRICS_ADDRESS": "192.0.2.1",
            "RECQ_HEARTBEAT_FILE": str(tmp_path / "hb"),
        }
        result = recq("worker", "--concurrency", "1", env=where, timeout=30)
        assert result.returncode == 2
        assert "RECQ_METRICS_ADDRESS=192.0.2.1 cannot be served" in result.stderr
        assert "Traceback" not in result.stderr

    def test_liveness_allows_six_beats_of_a_longer_heartbeat_interval(self, env, tmp_path):
        """A beat 65 s old fails at the default 10 s interval, and passes at 75 s: a healthy
        worker beating every 75 s was restarted over and over by its probe."""
        from worker.health import beat  # noqa: PLC0415

        path = tmp_path / "hb"
        beat(path, clock=lambda: time.time() - 65)
        where = {**env, "RECQ_HEARTBEAT_FILE": str(path)}
        assert recq("health", "liveness", env=where).returncode == 1
        slow = {**where, "RECQ_HEARTBEAT_INTERVAL": "75"}
        result = recq("health", "liveness", env=slow)
        assert result.returncode == 0, result.stderr

    def test_celery_run_worker_without_credentials_stops_too(self, env):
        """`celery -A worker.app worker` with no VideoSDK key exits 2 with the same message."""
        bare = {k: v for k, v in env.items() if not k.startswith("VIDEOSDK_")}
        result = python("-m", "celery", "-A", "worker.app", "worker", "-P", "threads", env=bare)
        assert result.returncode == 2
        assert "VIDEOSDK_API_KEY and VIDEOSDK_SECRET" in result.stderr

    def test_a_worker_with_no_option_has_32_calls_in_flight(self, env, sandbox):
        """The ceiling's 32 (docs/performance.md: at 16, one worker per core drained 14-16%
        less): 32 jobs whose calls take 2 s all reach VideoSDK together, not 16 at a
        time 2 s apart."""
        sandbox.latency = 2.0
        jobs = "".join(json.dumps({"roomId": f"room-{n}"}) + "\n" for n in range(32))
        assert recq("enqueue", "start-recording", "-", env=env, stdin=jobs).returncode == 0
        process = subprocess.Popen(
            [sys.executable, "-m", "worker", "worker"], env=env, stderr=subprocess.PIPE, text=True
        )
        try:
            calls = sandbox.wait_for_calls(32, timeout=60)
        finally:
            stop(process)
        arrivals = sorted(call.at for call in calls)
        assert arrivals[-1] - arrivals[0] < sandbox.latency

    @pytest.mark.parametrize(
        ("args", "pool"),
        [
            ([], "threads"),
            (["--pool", "gevent"], "gevent"),
            (["-Pgevent"], "gevent"),
            (["--pool=eventlet"], "eventlet"),
            (["-P", "gevent", "--concurrency", "8", "--pool", "threads"], "threads"),
        ],
    )
    def test_the_pool_asked_for_is_the_last_one_given(self, args, pool):
        """As for Celery's options, the last -P/--pool wins over recq's defaults."""
        assert requested_pool([*WORKER_DEFAULTS, *args]) == pool

    @pytest.mark.parametrize(
        ("options", "pool"),
        [
            (["--pool", "gevent"], "gevent"),
            (["--pool=gevent"], "gevent"),
            (["-P", "eventlet"], "eventlet"),
            (["-Peventlet"], "eventlet"),
        ],
    )
    def test_a_green_pool_is_refused_before_any_job_is_taken(self, env, options, pool):
        """gevent left jobs unended in the crash tests (docs/performance.md): `recq worker`
        refuses green pools with exit 2 and a reason, and takes nothing off the queue."""
        queued = recq("enqueue", "start-recording", "-", env=env, stdin=json.dumps(ROOM_JOB))
        job_id = queued.stdout.strip()
        result = recq("worker", *options, env=env, timeout=60)
        assert result.returncode == 2
        assert f"--pool {pool} is not supported" in result.stderr
        assert "the threads pool (the default)" in result.stderr
        assert "Traceback" not in result.stderr
        status = recq("status", job_id, "--json", env=env)
        assert json.loads(status.stdout)["state"] == "queued"

    def test_a_worker_started_from_code_on_gevent_is_refused_too(self, env):
        """`celery -A worker.app worker -P gevent`, or Celery started from code, is refused when
        the worker starts, with the same reason."""
        code = (
            "import os\n"
            "from worker.celery_app import create_app\n"
            "from worker.settings import Settings\n"
            "create_app(Settings.from_env(os.environ)).worker_main(['worker', '-P', 'gevent'])\n"
        )
        result = python("-c", code, env=env)
        assert result.returncode == 2
        assert "--pool gevent is not supported" in result.stderr

    def test_malformed_settings_are_named(self, env):
        """A broker URL that is not one is named, with exit code 2."""
        result = recq("status", "x", env={**env, "CELERY_BROKER_URL": "kafka://nope"})
        assert result.returncode == 2
        assert "CELERY_BROKER_URL='kafka://nope'" in result.stderr

    @pytest.mark.parametrize("port", ["abc", "99999"])
    def test_a_malformed_port_is_named_too(self, env, port):
        """Not a traceback from urllib with exit 1: exit 2, the variable, what a port must be."""
        url = f"redis://:hunter2@127.0.0.1:{port}/0"
        result = recq("status", "x", env={**env, "RECQ_REDIS_URL": url})
        assert result.returncode == 2
        assert "RECQ_REDIS_URL='redis://[redacted]@127.0.0.1:" in result.stderr
        assert "has a port that is not a number from 0 to 65535" in result.stderr
        assert "hunter2" not in result.stderr

    def test_celery_can_run_the_app_its_own_way(self, env, sandbox):
        """`celery -A worker.app worker` consumes and runs jobs like `recq worker`."""
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-P", "threads"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            result = recq("enqueue", "start-recording", "-", env=env, stdin=json.dumps(ROOM_JOB))
            assert wait_for_json_state(result.stdout.strip(), env)["state"] == "succeeded"
        finally:
            stop(process)


class TestFakeApiAndDev:
    def test_fake_api_serves_the_sandbox_on_the_given_port(self, env):
        """`recq fake-api --port N` answers on N until it is stopped."""
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "worker", "fake-api", "--port", str(port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert process.stdout is not None
            banner = process.stdout.readline()
            assert f"127.0.0.1:{port}" in banner
            health = requests.get(f"http://127.0.0.1:{port}/_sandbox/health", timeout=5)
            assert health.status_code == 200
        finally:
            stop(process)
            if process.stdout:
                process.stdout.close()

    def test_fake_api_on_a_taken_port_says_so(self, env, silent_port):
        """A port another process holds: one line and exit 1, not a traceback."""
        result = recq("fake-api", "--port", str(silent_port), env=env)
        assert result.returncode == 1
        assert result.stderr == (
            f"recq fake-api: cannot listen on 127.0.0.1:{silent_port}: Address already in use\n"
        )

    def test_fake_api_refuses_a_port_out_of_range(self, env):
        result = recq("fake-api", "--port", "99999", env=env)
        assert result.returncode == 2
        assert "'99999' is not a port: a number from 0 to 65535" in result.stderr

    def test_dev_stopped_by_sigterm_stops_what_it_started(self, env):
        """kill, timeout or a closed terminal stop `recq dev` as Ctrl-C does: its Redis and
        worker are stopped and its temporary files removed, not left running."""
        bare = {k: v for k, v in env.items() if not k.startswith(("VIDEOSDK_", "CELERY_"))}
        dev = subprocess.Popen(
            [sys.executable, "-m", "worker", "dev"],
            env=bare,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert dev.stdout is not None
        lines: list[str] = []
        try:
            while not any(line.startswith("enqueued") for line in lines):
                line = dev.stdout.readline()
                assert line, f"recq dev ended early: {lines}"
                lines.append(line)
            dev.send_signal(signal.SIGTERM)
            assert dev.wait(timeout=60) == 0
        finally:
            if dev.poll() is None:
                dev.kill()
            dev.stdout.close()
        port = int(next(x for x in lines if "throwaway Redis" in x).rsplit(":", 1)[1].split("/")[0])
        log = Path(next(x for x in lines if "its log is" in x).rsplit(" ", 1)[1].strip())
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        assert not log.parent.exists()

    def test_dev_runs_the_examples_to_their_events(self, env, tmp_path: Path):
        """`recq dev --once` starts everything, and both example recordings are accepted."""
        bare = {k: v for k, v in env.items() if not k.startswith(("VIDEOSDK_", "CELERY_"))}
        result = recq("dev", "--once", env=bare, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "recording.started" in result.stdout
        assert "track_recording.started" in result.stdout
        assert "sandbox VideoSDK API at http://127.0.0.1:" in result.stdout
