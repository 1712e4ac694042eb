"""Waiting for jobs from the command line: the progress of a batch, redrawn in place."""

from __future__ import annotations

import io

from worker.jobs import BULK_TRACK_RECORDING
from worker.progress import wait_for
from worker.state import State


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_redrawn_line_clears_what_a_longer_one_left(app):
    """'pending 10' then 'pending 9': without clearing, the screen would read 'pending 90'."""
    app.store.transition("b1", State.RUNNING, kind=BULK_TRACK_RECORDING.name)
    app.batches.create("b1", {"roomId": "r", "participants": ["p"], "kinds": ["audio"]}, total=10)
    screen = Terminal()

    def meanwhile(_seconds: float) -> None:
        app.batches.child_ended("b1", "c1", succeeded=True)
        app.store.transition("b1", State.PARTIALLY_FAILED, kind=BULK_TRACK_RECORDING.name)

    assert wait_for(app, ["b1"], screen, sleep=meanwhile) == 1
    redraws = screen.getvalue().split("\r")[1:]
    assert redraws[0].endswith("pending 10\x1b[K")
    assert redraws[1].startswith("b1 [###---")
    assert "pending 9\x1b[K" in redraws[1]
