"""Fanning a bulk job out into its child track jobs: each child once, resumable after a crash.

The children are derived from the bulk job (:func:`worker.jobs.child_jobs`), so their ids are
the same on every delivery of the batch. They are recorded ``queued`` (with their batch's id)
and published in chunks; after each chunk the batch notes how many are out, so a redelivered
batch resumes where the last delivery stopped, republishing at most the chunk it was in (whose
children's claims make a second message harmless) and never a second set of children. A child
that already ended is not published again: it is told to the batch as it ended (a child of an
earlier delivery that ran, or a job of that id that ended before the batch).

Once the fan-out has begun (the batch's hash exists, :meth:`FanOut.resume`), the batch's time and
meeting were met: any later delivery of it (redelivered after a crash, or enqueued again) only
resumes the fan-out, and the batch's outcome is its children's. Unless the fan-out stops moving
on: deliveries that keep dying at the same chunk (a worker killed there every time) are counted,
and past ``RECQ_MAX_DELIVERIES`` of them the batch fails ``too_many_deliveries``, as a job would.
The children it had published run on, each to its own end; a replay of the batch (``recq dead
replay``) counts afresh and publishes the rest.
"""

from __future__ import annotations

from collections.abc import Callable

from worker.batches import Batches, Progress
from worker.enqueuer import Enqueuer
from worker.jobs import Job, child_jobs
from worker.publisher import TaskMessage
from worker.state import Queued, State

CHUNK = 100


class FanOut:
    """Publishes a batch's children."""

    def __init__(
        self,
        *,
        batches: Batches,
        enqueuer: Enqueuer,
        chunk: int = CHUNK,
    ) -> None:
        self._batches = batches
        self._enqueuer = enqueuer
        self._chunk = chunk

    def resume(self, batch_id: str, *, afresh: bool) -> Progress | None:
        """The progress of a batch whose fan-out has begun (on this delivery or an earlier
        one), counting this delivery among those since it last moved on; None if it has not
        begun. ``afresh``: the job's first delivery since a replay, whose count starts over."""
        return self._batches.resume(batch_id, afresh=afresh)

    def run(
        self,
        batch: Job,
        fanned: Progress | None,
        *,
        starting: Callable[[int], None],
        resuming: Callable[[], None],
        ended: Callable[[Job, State], None],
    ) -> int:
        """Publish the batch's children not yet published; return how many were. ``fanned``:
        the progress :meth:`resume` found, or None on the delivery that begins the fan-out.

        ``starting(total)`` is called before the first child is published (so that the batch is
        recorded running before any child can end), on every delivery that starts from the top;
        ``resuming()`` instead on a delivery that finds children published already. Each child
        found already ended, and so not published, is given to ``ended``.
        """
        children = child_jobs(batch)
        if fanned is None and not self._batches.create(batch.id, batch.body, len(children)):
            fanned = self._batches.progress(batch.id)  # begun meanwhile, by another delivery
        first = fanned.published if fanned else 0
        if first == 0:
            starting(len(children))
        else:
            resuming()
        for offset in range(first, len(children), self._chunk):
            chunk = children[offset : offset + self._chunk]
            states = self._enqueuer.enqueue(
                [
                    (
                        Queued(c.id, c.kind.name, c.target, c.metadata, {"batchId": batch.id}),
                        TaskMessage(c.kind.task_name, c.id, c.body),
                    )
                    for c in chunk
                ]
            )
            # Counted before the fan-out moves past them: a delivery that dies in between
            # redoes this chunk, and counting a child twice changes nothing.
            for child, state in zip(chunk, states, strict=True):
                if state is not None:
                    ended(child, state)
            self._batches.advance(batch.id, offset + len(chunk))
        return len(children) - first
