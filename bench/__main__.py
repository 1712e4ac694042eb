"""``python -m bench``: run every measurement once and print one table.

``--quick`` runs small sizes (a smoke run, about a minute); ``--jobs N`` sets the jobs of each
throughput run; ``--json FILE`` also writes the figures as JSON; ``--profile FILE`` adds a
py-spy profile of the recq worker during one more throughput run (needs ``pip install py-spy``).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from dataclasses import replace
from pathlib import Path
from types import FrameType

from bench.suite import QUICK, Sizes, run
from bench.table import render


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="recq's benchmarks against the VideoSDK sandbox (20 ms answers) and a "
        "throwaway redis-server; prints one table. Figures, not pass/fail tests.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    full = Sizes()
    parser.add_argument("--jobs", type=int, help=f"jobs per throughput run (default {full.jobs:,})")
    parser.add_argument(
        "--enqueue-jobs", type=int, help=f"jobs per enqueue route ({full.enqueue_jobs:,})"
    )
    parser.add_argument(
        "--latency-seconds",
        type=float,
        help=f"length of the latency run ({full.latency_seconds:g} s)",
    )
    parser.add_argument(
        "--tracks", type=int, help=f"tracks of the fan-out batch ({full.fanout_tracks:,})"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures here")
    parser.add_argument(
        "--profile", type=Path, metavar="FILE", help="profile the recq worker with py-spy"
    )
    return parser


def _sizes(args: argparse.Namespace) -> Sizes:
    sizes = QUICK if args.quick else Sizes()
    if args.jobs:
        sizes = replace(sizes, jobs=args.jobs, capacity_calls=2 * args.jobs)
    if args.enqueue_jobs:
        sizes = replace(sizes, enqueue_jobs=args.enqueue_jobs)
    if args.tracks:
        sizes = replace(sizes, fanout_tracks=args.tracks)
    if args.latency_seconds:
        sizes = replace(sizes, latency_seconds=args.latency_seconds)
    return sizes


def _on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    # Unwind like Ctrl-C, so that every child process is stopped and the Redis removed.
    raise KeyboardInterrupt


def main() -> int:
    args = _parser().parse_args()
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        results, machine = run(_sizes(args), profile=args.profile)
    except KeyboardInterrupt:
        print("bench: interrupted; every process it started was stopped", file=sys.stderr)
        return 130
    print(render(results, machine))
    if args.json:
        document = {
            "machine": machine,
            "rows": [row.to_json() for row in results.rows],
            "notes": results.notes,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
