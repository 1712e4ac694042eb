"""Reading a task message's arguments: the job, and the id it runs under.

A recq task takes exactly one keyword argument, ``job``. A producer in another language may get
that wrong; such a message is not dropped but recorded as an invalid job, naming the problem.
"""

from __future__ import annotations

import re
from typing import Any

from worker.errors import InvalidJob, Violation

# The schema's rule for jobId (schemas/jobs/common.v1.json), checked before validation so a
# malformed one never names a state key.
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def job_from_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The ``job`` of a task call, or InvalidJob when the call is not ``(job=...)``."""
    if args or set(kwargs) != {"job"}:
        given = [f"{len(args)} positional"] if args else []
        given += [f"keyword {name!r}" for name in sorted(kwargs) if name != "job"]
        if "job" not in kwargs:
            given.append("no keyword 'job'")
        raise InvalidJob(
            [
                Violation(
                    "",
                    "arguments",
                    f"a recq task takes exactly one keyword argument, job (got {', '.join(given)})",
                )
            ]
        )
    return kwargs["job"]


def job_id_of(job: object, task_id: str) -> str:
    """A job's id: its ``jobId`` when it names a well-formed one, else the message's task id."""
    if isinstance(job, dict):
        given = job.get("jobId")
        if isinstance(given, str) and _JOB_ID.fullmatch(given):
            return given
    return task_id
