"""Where a process spends its time: py-spy samples, folded into the top functions.

:class:`Profiler` attaches ``py-spy record`` to a running process (``--gil``: only the samples
of the thread holding the GIL, which is what limits a threads-pool worker) and writes its raw
folded stacks; :func:`hotspots` reads them back as the functions with the largest share of the
samples, by their own time (``self``) and with what they call (``total``).

py-spy is an optional tool (``pip install py-spy``); ``python -m bench.profile FILE`` prints the
summary of a folded-stacks file, and ``--under FUNCTION`` where the samples under one function go.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.procs import stop

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
_SITE = re.compile(r".*/(site-packages|lib/python3\.\d+)/")


@dataclass(frozen=True, slots=True)
class Hotspot:
    """A function (``file:function``) and its share of the samples."""

    where: str
    self_share: float
    total_share: float


def py_spy() -> str | None:
    """Where the py-spy binary is: next to this interpreter, or on the PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    """``py-spy record`` attached to ``pid`` until :meth:`finish`."""

    def __init__(self, pid: int, output: Path, *, rate: int = 250, gil: bool = True) -> None:
        binary = py_spy()
        if binary is None:
            raise RuntimeError("py-spy is not installed: pip install py-spy")
        self.output = output
        args = [binary, "record", "--pid", str(pid), "--format", "raw", "--rate", str(rate)]
        args += ["--output", str(output), *(["--gil"] if gil else [])]
        self._process = subprocess.Popen(  # noqa: S603 - py-spy with our fixed arguments
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )

    def finish(self) -> list[Hotspot]:
        """Stop sampling (py-spy writes its file on SIGINT) and fold what it recorded."""
        if self._process.poll() is None:
            os.kill(self._process.pid, signal.SIGINT)
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            stop(self._process, grace=1.0)
        return hotspots(self.output.read_text()) if self.output.exists() else []


def _samples(folded: str) -> Iterator[tuple[list[str], int]]:
    """Each stack of py-spy's folded ``folded`` text, as its ``file:function`` frames (outermost
    first, process and thread frames left out), with how many samples it had."""
    for line in folded.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [name for frame in stack.split(";") if (name := _name(frame)) is not None]
        if frames:
            yield frames, int(count_text)


def hotspots(folded: str, *, top: int = 15) -> list[Hotspot]:
    """The ``top`` functions by own share of the samples in py-spy's folded ``folded`` stacks."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for frames, count in _samples(folded):
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    if not samples:
        return []
    return [
        Hotspot(where, own[where] / samples, total[where] / samples)
        for where, _count in own.most_common(top)
    ]


def inclusive(folded: str, *, top: int = 15) -> list[Hotspot]:
    """The ``top`` functions by share of samples they appear in (with what they call)."""
    spots = {spot.where: spot for spot in hotspots(folded, top=10_000)}
    ordered = sorted(spots.values(), key=lambda spot: spot.total_share, reverse=True)
    return ordered[:top]


def _name(frame: str) -> str | None:
    """``file:function`` of one py-spy frame; None for process and thread frames."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return None
    path = _SITE.sub("", match["file"])
    path = path.replace(str(Path(__file__).resolve().parent.parent) + "/", "")
    return f"{path}:{match['function']}"


def render(spots: list[Hotspot]) -> str:
    """The hotspots as aligned text lines: self %, total %, file:function."""
    lines = ["  self  total  function"]
    lines += [f"{s.self_share:6.1%} {s.total_share:6.1%}  {s.where}" for s in spots]
    return "\n".join(lines)


def under(folded: str, function: str, *, depth: int = 1, top: int = 25) -> list[Hotspot]:
    """Where the samples under ``function`` go (its outermost frame whose ``file:function``
    contains that text): first ``function`` itself, then the ``depth`` frames below it joined
    by ``;`` (``<self>`` for samples in ``function`` itself), each with its share of all the
    samples as both shares of its :class:`Hotspot`."""
    below: Counter[str] = Counter()
    samples = inside = 0
    for frames, count in _samples(folded):
        samples += count
        at = next((i for i, frame in enumerate(frames) if function in frame), None)
        if at is None:
            continue
        inside += count
        below[";".join(frames[at + 1 : at + 1 + depth]) or "<self>"] += count
    if not samples:
        return []
    spots = [Hotspot(where, n / samples, n / samples) for where, n in below.most_common(top)]
    return [Hotspot(f"{function} (all)", inside / samples, inside / samples), *spots]


def main(argv: list[str] | None = None) -> None:
    """Print the hotspots of a py-spy raw (folded) file, by own time and by inclusive time."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.profile",
        description="Summarise py-spy's folded stacks (python -m bench --profile FILE writes "
        "them): the top functions by own and by inclusive time, or with --under where the "
        "samples under one function go.",
    )
    parser.add_argument("file", type=Path, help="a py-spy raw (folded stacks) file")
    parser.add_argument(
        "--under",
        metavar="FUNCTION",
        help="break down the samples under the first frame whose file:function contains this "
        "text, e.g. JobRunner._finish",
    )
    parser.add_argument(
        "--depth", type=int, default=1, help="frames below FUNCTION to group by (default 1)"
    )
    args = parser.parse_args(argv)
    if not args.file.is_file():
        parser.error(f"{args.file}: no such file")
    text = args.file.read_text()
    if args.under:
        print(f"under {args.under}, shares of all samples")
        print(
            "\n".join(
                f"{s.total_share:6.1%}  {s.where}"
                for s in under(text, args.under, depth=args.depth)
            )
        )
        return
    print("by own time\n" + render(hotspots(text)))
    print("\nby inclusive time\n" + render(inclusive(text, top=25)))


if __name__ == "__main__":
    main()
