"""The ``recq`` console script's first step: gevent's patches, before anything else is imported.

``recq worker --pool gevent`` runs jobs on green threads, which take turns only if the standard
library's sockets, locks and sleeps are gevent's: the process has to be patched before any module
that uses them is imported, and recq's command line imports ``requests`` and ``redis``. So this
module looks at the arguments, patches if the worker's pool is gevent, and only then imports the
command line (Celery's own ``celery worker -P gevent`` does the same in its entry point).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

WORKER_DEFAULTS = ("--pool", "threads", "--concurrency", "16", "--loglevel", "INFO")
"""What ``recq worker`` runs with unless told otherwise (chosen in docs/performance.md)."""

GEVENT = "gevent"


def requested_pool(args: Sequence[str]) -> str | None:
    """The pool ``celery worker ARGS`` would run: the last ``-P``/``--pool`` given, if any."""
    pool = None
    for index, arg in enumerate(args):
        if arg in ("-P", "--pool") and index + 1 < len(args):
            pool = args[index + 1]
        elif arg.startswith("--pool="):
            pool = arg.partition("=")[2]
        elif arg.startswith("-P") and len(arg) > len("-P"):
            pool = arg[len("-P") :]
    return pool


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``recq`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["worker"] and requested_pool([*WORKER_DEFAULTS, *args[1:]]) == GEVENT:
        try:
            from gevent import monkey  # noqa: PLC0415 - only for a gevent worker
        except ImportError:
            message = "recq worker: --pool gevent needs gevent: pip install 'recq[gevent]'"
            print(message, file=sys.stderr)
            return 2
        monkey.patch_all()
    from worker.cli import main as command_line  # noqa: PLC0415 - after the patches

    return command_line(args)
