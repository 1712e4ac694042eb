"""The ``recq`` command line: run a worker, enqueue jobs, read their states and events.

Exit codes: 0 done; 1 the command ran but the answer is bad (an invalid job, an unknown id);
2 recq is misconfigured or misused; 141 the reader of its output went away (a broken pipe).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from worker.errors import (
    UNREACHABLE,
    BrokerUnavailable,
    InvalidJob,
    JobConflict,
    SettingsError,
    UnknownJob,
    which_failed,
)
from worker.jobs import BY_COMMAND, BY_NAME, BY_TASK
from worker.redact import redact_values
from worker.settings import Settings
from worker.state import epoch_iso

if TYPE_CHECKING:
    from worker.producer import RejectedJob
    from worker.scheduler import Scheduler

WORKER_DEFAULTS = ("--pool", "threads", "--concurrency", "32", "--loglevel", "INFO")
ENQUEUE_KINDS = {**BY_NAME, **BY_COMMAND}
"""What `recq enqueue` takes: each kind's command, or its name as states and events show it."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recq",
        description="Start VideoSDK recordings reliably: jobs on a broker, Celery workers, events.",
        epilog="Configuration comes from the environment: VIDEOSDK_API_KEY, VIDEOSDK_SECRET "
        "(or VIDEOSDK_SECRET_FILE), VIDEOSDK_API_ENDPOINT, CELERY_BROKER_URL, RECQ_REDIS_URL. "
        "See the README.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = commands.add_parser(
        "worker",
        help="run a worker (extra arguments go to `celery worker`)",
        description="Run a Celery worker for recq with defaults for I/O-bound work "
        f"({' '.join(WORKER_DEFAULTS)}). Any further arguments are passed to `celery worker` "
        "and override these defaults, e.g. `recq worker --concurrency 64`; `celery worker "
        "--help` lists them. The gevent and eventlet pools are refused (see "
        "docs/performance.md).",
    )
    worker.set_defaults(handler=_worker)

    enqueue = commands.add_parser(
        "enqueue",
        help="validate and publish jobs, printing one id a line",
        description="Validate jobs and publish them. The input is one JSON job, or JSON lines "
        "(one job a line). If any job is invalid, nothing of the input is published and every "
        "problem is printed with its line, field and reason.",
    )
    enqueue.add_argument(
        "kind",
        choices=sorted(ENQUEUE_KINDS),
        metavar="KIND",
        help="what the jobs ask for: "
        + ", ".join(sorted(BY_COMMAND))
        + " (start-track-recording, the kind's name in states and events, works too)",
    )
    enqueue.add_argument("file", help="a file of jobs, or - for standard input")
    enqueue.add_argument(
        "--wait",
        action="store_true",
        help="wait until every job ended, showing a batch's progress on standard error; exit 1 "
        "if any job (or any child of a batch) failed",
    )
    enqueue.set_defaults(handler=_enqueue)

    cancel = commands.add_parser(
        "cancel",
        help="cancel a job that has not run yet",
        description="Cancel a scheduled, waiting or queued job: it never runs and ends "
        "`cancelled`. Given a start that already succeeded and has a pending stop (its stopAt), "
        "cancels that stop, leaving the recording running (recq reschedule ID --stop-at now "
        "ends it instead). Given a batch whose children are out, does that to each child. A "
        "job being run at this moment cannot be cancelled (exit 1).",
    )
    cancel.add_argument("id", help="the job id")
    cancel.set_defaults(handler=_cancel)

    reschedule = commands.add_parser(
        "reschedule",
        help="move a scheduled job to new times, or a recording's stop",
        description="Move a job that still waits on the schedule. Times are RFC 3339 with a time "
        "zone, such as 2030-01-31T09:30:00Z, or `now`; the job is validated again as a whole "
        "(stopAt must be after startAt). For a start that already succeeded, --stop-at alone "
        "moves its pending stop, or schedules one if it has none (--stop-at now ends its "
        "recording at once). For a batch whose children are out, --stop-at does that to each "
        "child.",
    )
    reschedule.add_argument("id", help="the job id")
    reschedule.add_argument("--start-at", metavar="TIME", help="the new startAt")
    reschedule.add_argument("--stop-at", metavar="TIME", help="the new stopAt")
    reschedule.add_argument("--start-deadline", metavar="TIME", help="the new startDeadline")
    reschedule.set_defaults(handler=_reschedule)

    schedule = commands.add_parser(
        "schedule",
        help="show what is scheduled",
        description="Everything on the schedule, soonest first: scheduled starts and stops, "
        "starts waiting for their meeting, and jobs re-queued after an outage.",
    )
    schedule_commands = schedule.add_subparsers(
        dest="schedule_command", required=True, metavar="ACTION"
    )
    schedule_list = schedule_commands.add_parser("list", help="one line a job, soonest first")
    schedule_list.add_argument("--json", action="store_true", help="JSON lines instead")
    schedule_list.add_argument(
        "--limit", type=int, default=100, help="show at most this many (default 100; 0: all)"
    )
    schedule.set_defaults(handler=_schedule)

    status = commands.add_parser(
        "status",
        help="show a job's state",
        description="Show a job's state: its kind, target, attempts, times, error, history, "
        "its stop job, or a batch's counts and children. Exit 1 for an id recq does not know.",
    )
    status.add_argument("id", help="the job id that `recq enqueue` printed")
    status.add_argument("--json", action="store_true", help="print the state as a JSON object")
    status.set_defaults(handler=_status)

    _add_events(commands)

    dead = commands.add_parser(
        "dead",
        help="inspect and replay jobs that ended failed",
        description="Jobs that ended failed (invalid, rejected by VideoSDK, or unavailable past "
        "the outage window) are kept as dead letters with the job, the reason and the attempts. "
        "A replay validates the job again and publishes it under the same id.",
    )
    dead_commands = dead.add_subparsers(dest="dead_command", required=True, metavar="ACTION")
    dead_list = dead_commands.add_parser("list", help="one line a dead letter, newest first")
    dead_list.add_argument("--json", action="store_true", help="JSON lines instead")
    dead_show = dead_commands.add_parser("show", help="a dead letter in full, as JSON")
    dead_show.add_argument("id", help="the failed job's id (from `recq dead list`)")
    replay = dead_commands.add_parser("replay", help="publish dead jobs again, same ids")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?", help="the job to replay")
    which.add_argument("--all", action="store_true", help="replay every dead letter")
    dead.set_defaults(handler=_dead)

    _add_health(commands)

    fake = commands.add_parser(
        "fake-api",
        help="run the VideoSDK sandbox",
        description="Serve the VideoSDK sandbox: VideoSDK's recording and sessions endpoints, "
        "checked as VideoSDK checks them, for a worker pointed at it (it prints the variables "
        "to set). Drive it over HTTP under /_sandbox/: GET calls (what it received), POST "
        'faults (a JSON list such as [{"status": 503, "times": 2}] or [{"status": 400, '
        '"path": "/v2/recordings/start"}]), POST reset, POST or DELETE rooms/<roomId>/live '
        "(begin or end a meeting). The README's 'The sandbox' lists every fault field.",
    )
    fake.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to listen on (default 127.0.0.1; 0.0.0.0 in a container)",
    )
    fake.add_argument(
        "--port", type=port_number, default=8765, help="0 for any free port (default 8765)"
    )
    fake.add_argument("--latency", type=float, default=0.0, help="seconds added to each answer")
    fake.set_defaults(handler=_fake_api)

    dev = commands.add_parser(
        "dev",
        help="run everything on this machine: Redis, the sandbox, a worker, example jobs",
        description="Start a throwaway Redis, the VideoSDK sandbox (unless VIDEOSDK_API_KEY "
        "is set), and a worker; enqueue the example jobs and print their events as they "
        "happen. Ctrl-C stops everything.",
    )
    dev.add_argument("--once", action="store_true", help="exit when the example jobs have ended")
    dev.set_defaults(handler=_dev)
    return parser


def _add_events(commands: Any) -> None:
    events = commands.add_parser(
        "events",
        help="print events as JSON lines",
        description="Print the logged events (the most recent 10,000), oldest first, one "
        "CloudEvent a line; with --follow, keep printing new ones as they happen.",
    )
    events.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    events.add_argument(
        "--type",
        action="append",
        default=[],
        metavar="PATTERN",
        help="only events whose type matches PATTERN (shell-style: recording.*, *.failed); "
        "repeat for several",
    )
    events.add_argument(
        "--job",
        action="append",
        default=[],
        metavar="ID",
        help="only events about this job, its stop job, and a batch's children and their stops; "
        "repeat for several",
    )
    events.set_defaults(handler=_events)


def _add_health(commands: Any) -> None:
    health = commands.add_parser(
        "health",
        help="probe this worker: liveness or readiness (exit 0 healthy, 1 not)",
        description="Probes for Docker, Kubernetes and systemd. `liveness`: the worker's "
        "consumer wrote its heartbeat file (RECQ_HEARTBEAT_FILE) recently, so it is alive and "
        "not stuck; it needs neither the broker nor Redis. `readiness`: the broker "
        "(CELERY_BROKER_URL) and Redis (RECQ_REDIS_URL) answer. Prints one line saying why.",
    )
    health.add_argument("probe", choices=("liveness", "readiness"))
    health.add_argument(
        "--max-age",
        type=float,
        metavar="SECONDS",
        help="liveness: the oldest heartbeat that still counts (default 60, or six beats when "
        "RECQ_HEARTBEAT_INTERVAL is above 10)",
    )
    health.add_argument(
        "--timeout",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="readiness: how long the broker and Redis each have to answer (default 3)",
    )
    health.set_defaults(handler=_health)


def port_number(text: str) -> int:
    """A TCP port from the command line, or argparse's usage error saying what one is."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if port not in range(65536):
        raise argparse.ArgumentTypeError(f"{text!r} is not a port: a number from 0 to 65535")
    return port


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``recq`` console script."""
    args, extra = build_parser().parse_known_args(argv)
    if extra and args.command != "worker":
        print(f"recq {args.command}: unrecognised arguments: {' '.join(extra)}", file=sys.stderr)
        return 2
    try:
        settings = Settings.from_env(os.environ)
        code: int = args.handler(settings, args, extra)
        sys.stdout.flush()  # here, where a reader that went away is caught, not at exit
        sys.stderr.flush()
    except SettingsError as exc:
        print(f"recq: {exc}", file=sys.stderr)
        return 2
    except UNREACHABLE as exc:
        print(f"recq {args.command}: {which_failed(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # The reader went away (`recq events | head -1`): stop quietly, as a killed pipe would,
        # with nothing left to write at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.dup2(devnull, sys.stderr.fileno())
        return 128 + signal.SIGPIPE
    return code


def _app(settings: Settings, *, patient: bool = False) -> Any:
    """The app, with a worker's patience with Redis (``patient``: for what runs for long and
    should ride out a Redis restart), or one that reports a Redis that is down or does not
    answer within seconds."""
    # Imported here to keep `recq --help` fast.
    from worker.celery_app import QUICK_PATIENCE, WORKER_PATIENCE, create_app  # noqa: PLC0415

    return create_app(settings, patience=WORKER_PATIENCE if patient else QUICK_PATIENCE)


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


def _worker(settings: Settings, _args: argparse.Namespace, extra: list[str]) -> int:
    settings.require_credentials()
    from worker.celery_app import refuse_green_pool  # noqa: PLC0415

    # Before Celery's option parsing, which imports the pool's module (eventlet's needs greenlet).
    refuse_green_pool(requested_pool([*WORKER_DEFAULTS, *extra]) or "")
    from worker.logs import install  # noqa: PLC0415

    install(settings)
    app = _app(settings, patient=True)
    # JSON logs are for machines: no banner between the lines (Celery's --quiet).
    quiet = ["--quiet"] if settings.log_format == "json" else []
    # Celery's command itself, not app.worker_main, which drops the worker's exit code (click
    # returns it without standalone mode): a worker that met an unrecoverable error must exit
    # non-zero, for a supervisor to restart it or say so.
    from celery.bin.celery import celery  # noqa: PLC0415

    celery.params[0].default = app  # the --app option, as app.start sets it
    code = celery.main(args=[*quiet, "worker", *WORKER_DEFAULTS, *extra], standalone_mode=False)
    return code if isinstance(code, int) else 0


def _enqueue(settings: Settings, args: argparse.Namespace, _extra: list[str]) -> int:
    from worker.producer import BatchRejected, Producer  # noqa: PLC0415

    kind = ENQUEUE_KINDS[args.kind]
    try:
        lines, unreadable = read_jobs(_read_input(args.file))
    except ValueError as exc:
        print(f"recq enqueue: {exc}", file=sys.stderr)
        return 1
    app = _app(settings)
    producer = Producer(app)
    jobs = [job for _line, job in lines]
    if unreadable:  # nothing is published: every other line's problems are told as well
        return _refused(unreadable, lines, producer.check(kind, jobs)[1])
    try:
        ids = producer.enqueue_many(kind, jobs)
    except BatchRejected as exc:
        return _refused([], lines, exc.rejected)
    except BrokerUnavailable as exc:
        print(f"recq enqueue: {exc}", file=sys.stderr)
        return 1
    for job_id in ids:
        print(job_id, flush=True)
    if not args.wait:
        return 0
    from worker.progress import wait_for  # noqa: PLC0415

    # Waiting runs for long: it rides out a Redis restart, as a worker does.
    return wait_for(_app(settings, patient=True), ids, sys.stderr)


def _refused(
    unreadable: list[tuple[int, str]],
    lines: list[tuple[int, Any]],
    rejected: Sequence[RejectedJob],
) -> int:
    """Print every problem of an input, line by line, and say nothing was published: exit 1."""
    problems = list(unreadable)
    for job in rejected:
        line = lines[job.index][0]
        problems += [(line, str(violation)) for violation in job.error.violations]
    problems.sort(key=lambda numbered: numbered[0])
    for line, problem in problems:
        print(f"recq enqueue: line {line}: {problem}", file=sys.stderr)
    count = len({line for line, _problem in problems})
    print(f"recq enqueue: {count} invalid job(s); nothing was published", file=sys.stderr)
    return 1


def _read_input(path: str) -> str:
    """The text of the file at ``path`` (``-``: standard input), which must be UTF-8: a byte
    that is not is kept as a lone surrogate (``surrogateescape``), and its line is named by
    :func:`read_jobs`."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as stream:
                data = stream.read()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    return data.decode("utf-8-sig", errors="surrogateescape")


_NOT_UTF8 = re.compile("[\udc80-\udcff]")
"""A byte that was not UTF-8, as ``surrogateescape`` decoding keeps it."""


class _RepeatedKey(ValueError):
    """A JSON object names one key twice: which value was meant cannot be known."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise _RepeatedKey(f"the key {key!r} is given twice in one object")
        found[key] = value
    return found


def _json(text: str) -> Any:
    return json.loads(text, object_pairs_hook=_unique_keys)


def read_jobs(text: str) -> tuple[list[tuple[int, Any]], list[tuple[int, str]]]:
    """The jobs in ``text`` (one JSON object, or JSON lines) with their line numbers, and the
    lines that could not be read, each with why."""
    if not text.strip():
        raise ValueError("the input holds no job")
    try:
        whole = json.loads(text)
    except (ValueError, RecursionError):
        whole = None
    if isinstance(whole, dict):  # one job, perhaps over several lines
        not_utf8 = [
            (number, problem)
            for number, line in enumerate(text.split("\n"), start=1)
            if (problem := _not_utf8(line)) is not None
        ]
        if not_utf8:
            return [], not_utf8
        try:
            return [(1, _json(text))], []
        except _RepeatedKey as exc:
            return [], [(1, str(exc))]
    jobs: list[tuple[int, Any]] = []
    unreadable: list[tuple[int, str]] = []
    # Only "\n" ends a line: U+2028 and its kind may stand unescaped inside a JSON string.
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            job, problem = _read_line(line)
            if problem is None:
                jobs.append((number, job))
            else:
                unreadable.append((number, problem))
    if unreadable and _spread_over_lines(text):
        raise ValueError(
            "the jobs are spread over several lines each: give one job a line (`jq -c` writes "
            "them so); nothing was published"
        )
    return jobs, unreadable


def _read_line(line: str) -> tuple[Any, str | None]:
    """A line's job, or why it cannot be read."""
    if (problem := _not_utf8(line)) is not None:
        return None, problem
    try:
        return _json(line), None
    except _RepeatedKey as exc:
        return None, str(exc)
    except ValueError as exc:
        return None, f"not valid JSON ({exc})"
    except RecursionError:
        return None, "JSON nested too deeply to read"


def _not_utf8(line: str) -> str | None:
    """Why ``line`` cannot be read, if it held a byte that is not UTF-8 (its first)."""
    bad = _NOT_UTF8.search(line)
    return None if bad is None else f"not UTF-8 text (byte 0x{ord(bad.group()) - 0xDC00:02x})"


_JSON_TEXT = re.compile(r"[^ \t\n\r]")


def _spread_over_lines(text: str) -> bool:
    """Whether ``text`` is several JSON values, some over more than one line (jq's output)."""
    decoder = json.JSONDecoder()
    index, values, spread = 0, 0, False
    while (start := _JSON_TEXT.search(text, index)) is not None:
        index = start.start()
        try:
            _value, end = decoder.raw_decode(text, index)
        except (ValueError, RecursionError):
            return False
        spread = spread or "\n" in text[index:end]
        values, index = values + 1, end
    return values > 1 and spread


def _cancel(settings: Settings, args: argparse.Namespace, _extra: list[str]) -> int:
    try:
        done = _app(settings).producer_scheduler.cancel(args.id)
    except (UnknownJob, JobConflict) as exc:
        print(f"recq cancel: {exc}", file=sys.stderr)
        return 1
    for job_id in done.cancelled:
        print(f"{job_id}: cancelled")
    for start, stop in done.pending_stops:
        print(
            f"{stop}: cancelled (the pending stop of {start}; its recording keeps running "
            f"until recq reschedule {start} --stop-at TIME)"
        )
    for stop in done.stops:
        print(
            f"  an earlier attempt VideoSDK did not answer may have started its recording: "
            f"{stop} stops it now"
        )
    for job_id in done.busy:
        print(
            f"recq cancel: job {job_id} is being run right now and can no longer be cancelled",
            file=sys.stderr,
        )
    return 1 if done.busy else 0


def _reschedule(settings: Settings, args: argparse.Namespace, _extra: list[str]) -> int:
    if not (args.start_at or args.stop_at or args.start_deadline):
        print(
            "recq reschedule: give at least one of --start-at, --stop-at, --start-deadline",
            file=sys.stderr,
        )
        return 2
    app = _app(settings)
    # The fleet's "now", which may not be this host's (read only when asked for).
    now = epoch_iso(app.fleet_time()) if "now" in (args.start_at, args.stop_at) else None
    times = {
        "start_at": now if args.start_at == "now" else args.start_at,
        "stop_at": now if args.stop_at == "now" else args.stop_at,
        "start_deadline": args.start_deadline,
    }
    scheduler = app.producer_scheduler
    try:
        if scheduler.fanned_out(args.id):
            return _reschedule_children(scheduler, args.id, **times)
        job, timing = scheduler.reschedule(args.id, **times)
    except (UnknownJob, JobConflict, InvalidJob) as exc:
        print(f"recq reschedule: {exc}", file=sys.stderr)
        return 1
    due = "now" if timing.due is None else epoch_iso(timing.due)
    print(f"{job.id}: scheduled for {due}")
    return 0


def _reschedule_children(
    scheduler: Scheduler,
    batch_id: str,
    *,
    start_at: str | None,
    stop_at: str | None,
    start_deadline: str | None,
) -> int:
    if stop_at is None or start_at or start_deadline:
        raise JobConflict(
            f"batch {batch_id} has published its children: only --stop-at moves them (their "
            "stops) now"
        )
    moves = scheduler.reschedule_children(batch_id, stop_at=stop_at)
    for job_id in moves.moved:
        print(f"{job_id}: stops at {stop_at}")
    for job_id, why in moves.refused:
        print(f"recq reschedule: {job_id}: {why}", file=sys.stderr)
    if not moves.moved and not moves.refused:
        print(
            f"recq reschedule: batch {batch_id}: every child already ended, with no recording "
            "left to stop",
            file=sys.stderr,
        )
    return 0 if moves.moved and not moves.refused else 1


def _schedule(settings: Settings, args: argparse.Namespace, _extra: list[str]) -> int:
    entries = _app(settings).producer_scheduler.upcoming()
    if args.limit > 0:
        entries = entries[: args.limit]
    for delivery, record in entries:
        kind = BY_TASK[delivery.task].name if delivery.task in BY_TASK else delivery.task
        state = record.state.value if record else "unknown"
        target = (record.target if record else None) or {}
        if args.json:
            line = {
                "id": delivery.job_id,
                "dueAt": epoch_iso(delivery.due),
                "kind": kind,
                "state": state,
                "target": target,
            }
            print(json.dumps(line))
        else:
            where = " ".join(f"{k}={v}" for k, v in target.items())
            print(f"{epoch_iso(delivery.due)}  {delivery.job_id}  {kind}  {state}  {where}")
    return 0


def _status(settings: Settings, args: argparse.Namespace, _extra: list[str]) -> int:
    from worker.progress import batch_status  # noqa: PLC0415

    app = _app(settings)
    record = app.store.get(args.id)
    if record is None:
        print(f"recq status: no job {args.id!r} (unknown, or its state expired)", file=sys.stderr)
        return 1
    batch = batch_status(app, args.id)
    if args.json:
        print(json.dumps({**record.to_json(), **(batch or {})}, indent=2))
        return 0
    # A message refused before its job could be read has an empty target: nothing to show.
    target = " ".join(f"{k}={v}" for k, v in (record.target or {}).items() if v not in ("", None))
    # A message of an unknown task is recorded with neither kind nor target.
    about = "; ".join(part for part in (record.kind, target) if part)
    print(f"{record.id}: {record.state.value}" + (f" ({about})" if about else ""))
    print(
        f"  attempts: {record.attempts}; created {record.created_at}; updated {record.updated_at}"
    )
    times = record.to_json()
    for field, label in (("dueAt", "due"), ("deadline", "deadline"), ("stopJobId", "stop job")):
        if field in times:
            print(f"  {label}: {times[field]}")
    if "slotAt" in times:
        print(
            f"  rate limit: no call slot free (RECQ_RATE_LIMIT); its turn is at {times['slotAt']}"
        )
    if batch is not None:
        counts = ", ".join(f"{n} {what}" for what, n in batch["counts"].items())
        print(f"  children: {counts}")
        total = batch["counts"]["total"]
        if batch["published"] < total:  # under way, or failed part way through
            print(f"  fan-out: {batch['published']} of {total} children made so far")
    if record.error:
        print(f"  error: {record.error.get('reason')}: {record.error.get('message')}")
    return 0


def _events(settings: Settings, args: argparse.Namespace, _extra: list[str]) -> int:
    from worker.event_log import EventFilter  # noqa: PLC0415

    wanted = EventFilter(types=tuple(args.type), jobs=tuple(args.job))
    for event in _app(settings, patient=args.follow).event_log.read(follow=args.follow):
        if wanted(event):
            print(json.dumps(event), flush=True)
    return 0


def _dead(settings: Settings, args: argparse.Namespace, _extra: list[str]) -> int:
    from worker.producer import Producer  # noqa: PLC0415

    app = _app(settings)
    letters = app.dead_letters
    if args.dead_command == "list":
        for letter in letters.list():
            if args.json:
                print(json.dumps(redact_values(letter.to_json())))
            else:
                print(
                    f"{letter.job_id}  {letter.task}  {letter.error['reason']}: "
                    f"{letter.error['message'][:120]}"
                )
        return 0
    if args.dead_command == "show":
        letter = letters.get(args.id)
        if letter is None:
            print(f"recq dead show: no dead letter {args.id!r}", file=sys.stderr)
            return 1
        # The letter keeps the job whole for its replay; what is shown keeps no secret.
        print(json.dumps(redact_values(letter.to_json()), indent=2))
        return 0
    producer = Producer(app)
    ids = [letter.job_id for letter in letters.list()] if args.all else [args.id]
    failed = 0
    for job_id in ids:
        try:
            print(producer.replay(job_id))
        except (UnknownJob, InvalidJob, JobConflict, BrokerUnavailable) as exc:
            failed += 1
            print(f"recq dead replay: {job_id}: {exc}", file=sys.stderr)
    return 1 if failed else 0


def _health(settings: Settings, args: argparse.Namespace, _extra: list[str]) -> int:
    from worker.health import default_max_age, liveness, readiness  # noqa: PLC0415

    if args.probe == "liveness":
        interval = settings.heartbeat_interval
        max_age = default_max_age(interval) if args.max_age is None else args.max_age
        verdict = liveness(settings.heartbeat_file, max_age=max_age)
    else:
        verdict = readiness(settings, timeout=args.timeout)
    print(verdict.message, file=sys.stdout if verdict.healthy else sys.stderr)
    return 0 if verdict.healthy else 1


def _fake_api(_settings: Settings, args: argparse.Namespace, _extra: list[str]) -> int:
    from worker.sandbox import DEFAULT_API_KEY, DEFAULT_SECRET, run_forever  # noqa: PLC0415

    try:
        run_forever(
            host=args.host,
            port=args.port,
            api_key=DEFAULT_API_KEY,
            secret=DEFAULT_SECRET,
            latency=args.latency,
        )
    except OSError as exc:  # the port is taken, or the host is not this machine's
        print(
            f"recq fake-api: cannot listen on {args.host}:{args.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return 1
    return 0


def _dev(_settings: Settings, args: argparse.Namespace, _extra: list[str]) -> int:
    from worker.dev import run_dev  # noqa: PLC0415

    return run_dev(os.environ, once=args.once)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
