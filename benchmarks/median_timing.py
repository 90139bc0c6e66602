"""Median timings of several sides measured in rounds whose order rotates, shared by the benchmarks."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import TypeVar

Side = TypeVar("Side")


def median_seconds(sides: Sequence[tuple[str, Side]], timed: Callable[[Side], float], repeats: int) -> dict[str, float]:
    """Median of `repeats` timed runs per named side.

    Args:
        sides: `(name, side)` pairs; `timed(side)` runs one side once and returns its seconds.
        repeats: rounds; each round runs every side once.

    The order rotates each round, so every side runs first, middle and last equally often (no
    side always follows the same one, and drift or a warm cache favours none).

    Returns:
        `{name: median seconds}`.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    sides = list(sides)
    times: dict[str, list[float]] = {name: [] for name, _ in sides}
    for repeat in range(repeats):
        shift = repeat % len(sides)
        for name, side in sides[shift:] + sides[:shift]:
            times[name].append(timed(side))
    return {name: statistics.median(values) for name, values in times.items()}
