"""The table's rows for workers draining together: one `recq worker` process per core."""

from __future__ import annotations

import pytest

from bench.recq_run import MB, Throughput
from bench.report import Figures, rows

PER_CORE = "recq worker, one process per core"


def drained(rate: float, processes: int, worker_cores: float) -> Throughput:
    return Throughput(
        jobs=1_000,
        processes=processes,
        rate=rate,
        failures=0,
        cpu={"worker": worker_cores, "sandbox": 0.2},
        rss_after=150 * MB,
    )


def row(results, name):
    return next(r for r in results.rows if r.name == name)


def test_workers_drained_together_are_shown_against_the_ceiling():
    figures = Figures("threads", 16, ceiling=750.0, cores=2, per_core=drained(600.0, 2, 1.2))
    results = rows(figures, tracks=10)
    assert results.value(PER_CORE) == 600.0
    assert "2 `recq worker` processes" in row(results, PER_CORE).how
    assert results.value("recq per core / ceiling") == pytest.approx(0.8)
    assert results.value("recq worker RSS, one process per core") == pytest.approx(150.0)
    assert any("2.00 ms of worker CPU per job" in note for note in results.notes)


def test_on_one_core_the_row_says_why_it_was_not_measured():
    results = rows(Figures("threads", 16, ceiling=750.0, cores=1), tracks=10)
    assert results.value(PER_CORE) is None
    assert row(results, PER_CORE).how == "not measured: one core"
    assert results.value("recq per core / ceiling") is None
