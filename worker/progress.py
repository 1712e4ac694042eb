"""Following jobs from the command line: a batch's status, and waiting with a progress bar."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING, Any

from worker.batches import Progress, child_outcomes
from worker.jobs import BULK_TRACK_RECORDING, Job
from worker.state import State

if TYPE_CHECKING:
    from worker.celery_app import RecqCelery

BAR_WIDTH = 30


def batch_status(app: RecqCelery, batch_id: str) -> dict[str, Any] | None:
    """A batch's ``counts``, how many children its fan-out has ``published`` (made), and its
    ``children`` (each with its state), or None if not a batch."""
    progress = app.batches.progress(batch_id)
    body = app.batches.job(batch_id)
    if progress is None or body is None:
        return None
    batch = Job(batch_id, BULK_TRACK_RECORDING, body)
    return {
        "counts": progress.counts(),
        "published": progress.published,
        "children": child_outcomes(app.store, batch),
    }


def bar(progress: Progress) -> str:
    """``[#########---------] 512/1000  succeeded 500  failed 12  pending 488``."""
    done = progress.succeeded + progress.failed
    filled = BAR_WIDTH * done // max(progress.total, 1)
    return (
        f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {done}/{progress.total}  "
        f"succeeded {progress.succeeded}  failed {progress.failed}  pending {progress.pending}"
    )


def wait_for(
    app: RecqCelery,
    job_ids: Sequence[str],
    out: IO[str],
    *,
    interval: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Wait until every job ended, drawing each batch's progress; 0 if all succeeded, else 1.

    On a terminal the bar is redrawn in place; otherwise a line is written when the counts change.
    """
    redraw = out.isatty()
    failed = 0
    for job_id in job_ids:
        shown = ""
        while True:
            record = app.store.get(job_id)
            progress = app.batches.progress(job_id)
            if progress is not None:
                line = f"{job_id} {bar(progress)}"
                if line != shown:
                    # A shorter line than the last must not leave the end of it on screen.
                    out.write(f"\r{line}\x1b[K" if redraw else f"{line}\n")
                    out.flush()
                    shown = line
            if record is not None and record.state.terminal:
                break
            sleep(interval)
        if redraw and shown:
            out.write("\n")
        if record.state is not State.SUCCEEDED:
            failed += 1
            reason = f": {record.error['reason']}" if record.error else ""
            out.write(f"{job_id}: {record.state.value}{reason}\n")
    return 1 if failed else 0
