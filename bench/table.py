"""The run as one table (Markdown, so it reads in a terminal and pastes into the docs)."""

from __future__ import annotations

from collections.abc import Mapping

from bench.results import Results, Row

_FORMATS = {
    "jobs/s": "{:,.0f} jobs/s",
    "calls/s": "{:,.0f} calls/s",
    "ms": "{:,.1f} ms",
    "s": "{:,.3f} s",
    "MB": "{:,.1f} MB",
    "x": "{:.2f}",
    "cores": "{:.2f} cores",
}


def figure(row: Row) -> str:
    """The row's value with its unit, or why there is none."""
    if row.value is None:
        return "not measured"
    return _FORMATS.get(row.unit, "{:,.3g} " + row.unit).format(row.value)


def verdict(row: Row) -> str:
    if row.met is None:
        return "" if not row.goal else "?"
    return "yes" if row.met else "**no**"


def render(results: Results, machine: Mapping[str, str]) -> str:
    """The table, then the machine and the run's notes."""
    header = ("measurement", "figure", "goal", "met?")
    lines = [
        (f"{row.name} ({row.how})" if row.how else row.name, figure(row), row.goal, verdict(row))
        for row in results.rows
    ]
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(4)]

    def line(cells: tuple[str, ...]) -> str:
        padded = [cell.ljust(width) for cell, width in zip(cells, widths, strict=True)]
        return "| " + " | ".join(padded) + " |"

    out = [line(header), "|" + "|".join("-" * (width + 2) for width in widths) + "|"]
    out += [line(cells) for cells in lines]
    out.append("")
    out.append("machine: " + ", ".join(f"{key} {value}" for key, value in machine.items()))
    out += [f"- {note}" for note in results.notes]
    return "\n".join(out)
