"""The benchmark suite runs end to end and prints its whole table.

A smoke run at tiny sizes (about 15 s): it checks that every measurement ran and printed its
row, never the figures themselves. Benchmarks print figures; they are not timed tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ROWS = [
    "sandbox capacity",
    "sandbox: calls one core answers",
    "ceiling: requests, no queue",
    "ceiling at recq's concurrency",
    "recq worker",
    "peer: plain Celery task",
    "recq / ceiling",
    "recq / peer",
    "recq worker, one process per core",
    "recq per core / ceiling",
    "added latency p50, enqueue to call",
    "added latency p99, enqueue to call",
    "enqueue: Producer.enqueue_many",
    "enqueue: Producer.enqueue",
    "enqueue: recq enqueue",
    "enqueue: recq enqueue, after start-up",
    "fan-out of 20 tracks",
    "fan-out of 20 tracks, from enqueue",
    "batch of 20 tracks completed",
    "recq worker RSS",
    "recq worker RSS, peak",
    "recq worker RSS, one process per core",
]
TINY = ["--quick", "--jobs", "50", "--enqueue-jobs", "50", "--latency-seconds", "0.5"]


class TestBenchSmoke:
    def test_a_tiny_run_prints_every_row_of_the_table(self, tmp_path):
        """`python -m bench --quick` at tiny sizes prints a table with every measurement."""
        figures = tmp_path / "figures.json"
        command = [sys.executable, "-m", "bench", *TINY, "--tracks", "20", "--json", str(figures)]
        done = subprocess.run(
            command, check=False, cwd=ROOT, capture_output=True, text=True, timeout=110
        )
        assert done.returncode == 0, done.stderr
        printed = [line.split("|")[1].strip() for line in done.stdout.splitlines() if "|" in line]
        for name in ROWS:
            assert any(cell == name or cell.startswith(f"{name} (") for cell in printed), name
        written = json.loads(figures.read_text())
        assert [row["name"] for row in written["rows"]] == ROWS
        assert written["machine"]["cpus"]
