"""The benchmark's command-line tools explain themselves and read py-spy's folded stacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.profile import hotspots, under
from bench.recq_run import until
from bench.suite import Sizes

ROOT = Path(__file__).resolve().parents[2]

THREAD = "_worker (concurrent/futures/thread.py:83);JobRunner.run (/w/worker/runner.py:10)"
FINISH = f"{THREAD};JobRunner._finish (/w/worker/runner.py:400)"

# Ten samples: four in the runner's end (two writing, one publishing, one in itself), four in
# the call, two in the event loop.
FOLDED = "\n".join(
    [
        f"{FINISH};Reporter.record (/w/worker/reporter.py:60)"
        ";JobStore.transition (/w/worker/state.py:183) 2",
        f"{FINISH};Reporter.announce (/w/worker/reporter.py:101) 1",
        f"{FINISH} 1",
        f"{THREAD};VideoSDKClient.post (/w/worker/videosdk.py:99) 4",
        "Hub.create_loop (/x/lib/python3.11/site-packages/kombu/asynchronous/hub.py:300) 2",
    ]
)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("command", ["bench", "bench.pools", "bench.profile", "bench.task"])
def test_each_command_has_a_help_that_explains_it(command):
    result = run(command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: python -m {command}")


def test_the_suite_help_gives_the_sizes_a_full_run_uses():
    result = run("bench", "--help")
    text = " ".join(result.stdout.split())
    full = Sizes()
    assert f"jobs per throughput run (default {full.jobs:,})" in text
    assert f"jobs per enqueue route ({full.enqueue_jobs:,})" in text
    assert f"tracks of the fan-out batch ({full.fanout_tracks:,})" in text


def test_a_missing_file_is_a_clear_error_not_a_traceback(tmp_path):
    result = run("bench.profile", str(tmp_path / "absent.folded"))
    assert result.returncode == 2
    assert "absent.folded: no such file" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["bench.pools", "bench.task"])
def test_a_job_count_below_one_is_refused(command):
    result = run(command, "0")
    assert result.returncode == 2
    assert "at least 1" in result.stderr


@pytest.mark.integration
def test_task_runs_the_jobs_and_prints_what_each_cost():
    """The task's path alone: CPU and Redis commands per job, from a run of its own."""
    result = run("bench.task", "20")
    assert result.returncode == 0, result.stdout + result.stderr
    line = result.stdout.splitlines()[-1]
    assert line.startswith("20 jobs: ")
    assert "us of CPU per job" in line
    assert "Redis commands per job" in line


@pytest.mark.integration
def test_pools_drains_with_the_options_given_and_measures_latency_with_the_same_worker():
    """A tiny run: the options reach `recq worker`, and --latency adds its line."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.pools", "40", "--latency", "--pool", "threads", "-c", "4"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    first, second = result.stdout.splitlines()[-2:]
    assert first.startswith("--pool threads -c 4: ")
    assert "jobs/s, worker CPU" in first
    assert second.strip().startswith("added latency at ")
    assert "p99" in second


def test_hotspots_rank_functions_by_their_own_samples():
    top = hotspots(FOLDED, top=2)
    assert [spot.where for spot in top] == [
        "/w/worker/videosdk.py:VideoSDKClient.post",
        "/w/worker/state.py:JobStore.transition",
    ]
    assert top[0].self_share == pytest.approx(0.4)


def test_under_breaks_a_function_down_into_what_it_calls():
    total, *below = under(FOLDED, "JobRunner._finish")
    assert (total.where, total.total_share) == ("JobRunner._finish (all)", pytest.approx(0.4))
    shares = {spot.where: spot.total_share for spot in below}
    assert shares == {
        "/w/worker/reporter.py:Reporter.record": pytest.approx(0.2),
        "/w/worker/reporter.py:Reporter.announce": pytest.approx(0.1),
        "<self>": pytest.approx(0.1),
    }


def test_under_groups_by_as_many_frames_as_asked():
    _total, *below = under(FOLDED, "JobRunner._finish", depth=2)
    assert below[0].where == (
        "/w/worker/reporter.py:Reporter.record;/w/worker/state.py:JobStore.transition"
    )


def test_the_command_prints_both_views_and_the_breakdown(tmp_path):
    folded = tmp_path / "worker.folded"
    folded.write_text(FOLDED)
    views = run("bench.profile", str(folded))
    assert "by own time" in views.stdout
    assert "by inclusive time" in views.stdout
    breakdown = run("bench.profile", str(folded), "--under", "JobRunner._finish")
    assert " 40.0%  JobRunner._finish (all)" in breakdown.stdout
    assert " 20.0%  /w/worker/reporter.py:Reporter.record" in breakdown.stdout


class _Exited:
    def alive(self):
        raise RuntimeError("recq-worker exited with 1; see its log")


def test_a_wait_fails_at_once_when_a_worker_exits_and_says_what_it_waited_for():
    with pytest.raises(RuntimeError, match="exited"):
        until(lambda: False, [_Exited()], timeout=60, failure=lambda: "never")
    with pytest.raises(TimeoutError, match="only 3 of 5 calls"):
        until(lambda: False, [], timeout=0.05, failure=lambda: "only 3 of 5 calls", every=0.01)
