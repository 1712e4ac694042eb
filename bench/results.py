"""Figures as values: one :class:`Row` per line of the table, and the arithmetic behind them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Row:
    """One measurement: its figure, how it was taken, and its goal if the issue sets one.

    ``met`` is None for a figure without a goal, or when there was nothing to measure.
    """

    name: str
    value: float | None
    unit: str
    how: str = ""
    goal: str = ""
    met: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Results:
    """Every row of a run, in table order, with the notes that explain them."""

    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def value(self, name: str) -> float | None:
        """The figure of the row called ``name``, if it was measured."""
        return next((row.value for row in self.rows if row.name == name), None)


def rate(times: Sequence[float]) -> float | None:
    """Events per second between the first and the last of ``times``: (n - 1) / span."""
    if len(times) < 2:  # noqa: PLR2004 - a rate needs two points
        return None
    span = max(times) - min(times)
    return (len(times) - 1) / span if span > 0 else None


def percentile(values: Sequence[float], share: float) -> float | None:
    """The nearest-rank percentile (``share`` in 0..1) of ``values``."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


def at_least(value: float | None, goal: float | None) -> bool | None:
    return None if value is None or goal is None else value >= goal


def at_most(value: float | None, goal: float | None) -> bool | None:
    return None if value is None or goal is None else value <= goal
