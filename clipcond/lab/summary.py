"""Pool result lines into means with 95% intervals, per setup, suite and category.

Pass/fail values (the judge's checks) are rates with a Wilson score interval, which stays
inside [0, 1] and is sensible at 0 or n successes. Continuous values (CLIP score, the
fraction of objects found) get a percentile bootstrap interval of the mean (2000 resamples,
a fixed seed and the values sorted first, so a report is a function of the results, not of
their order).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# two-sided 95%: the 0.975 quantile of the standard normal
Z_95 = 1.959963984540054
BOOTSTRAP_RESAMPLES = 2000
ALL_CATEGORIES = "(all)"


def wilson_interval(successes: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a rate `successes / total` (95% by default); (0, 1) when total is 0."""
    if total <= 0:
        return (0.0, 1.0)
    if not 0 <= successes <= total:
        raise ValueError(f"successes must be in [0, {total}], got {successes}")
    rate = successes / total
    denominator = 1.0 + z * z / total
    centre = (rate + z * z / (2 * total)) / denominator
    half = z * math.sqrt(rate * (1 - rate) / total + z * z / (4 * total * total)) / denominator
    # the interval always holds the rate (rounding could leave 1e-17 between them at 0 or n)
    return (max(0.0, min(rate, centre - half)), min(1.0, max(rate, centre + half)))


def bootstrap_interval(
    values: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of the mean of `values` (a point for one value).

    The values are sorted before resampling, so the interval depends on which values there are,
    not on their order (a resumed run appends its redrawn images' results at the end).
    """
    data = np.sort(np.asarray(values, dtype=np.float64))
    if data.size == 0:
        raise ValueError("bootstrap_interval needs at least one value")
    if data.size == 1:
        return (float(data[0]), float(data[0]))
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return (float(low), float(high))


@dataclass(frozen=True)
class Cell:
    """One metric pooled over the images of a setup, suite and category.

    Attributes:
        setup, suite, category: the group (category "(all)" pools a suite's categories).
        metric: the metric's name (e.g. "exact", "clip_score").
        count: images that have a value for the metric.
        mean: the rate or the mean; low, high: its 95% interval.
        kind: "rate" (pass/fail, Wilson) or "mean" (continuous, bootstrap).
    """

    setup: str
    suite: str
    category: str
    metric: str
    count: int
    mean: float
    low: float
    high: float
    kind: str


def pool(values: Sequence[bool | float]) -> tuple[float, float, float, str]:
    """Mean, interval and kind of one metric's values (bools: a rate; numbers: a mean)."""
    if all(isinstance(v, bool) for v in values):
        successes = sum(values)
        low, high = wilson_interval(successes, len(values))
        return successes / len(values), low, high, "rate"
    mean = float(np.mean(values))
    low, high = bootstrap_interval([float(v) for v in values])
    # resampled means of equal values can differ from `mean` in the last bit
    return mean, min(low, mean), max(high, mean), "mean"


def summarise(lines: Iterable[dict[str, Any]]) -> list[Cell]:
    """Pool result lines (`clipcond.lab.results`) per setup, suite, category and metric.

    Each suite also gets a category "(all)" over its images. Cells come in the order groups
    and metrics first appear in `lines`.
    """
    groups: dict[tuple[str, str, str, str], list] = {}
    for line in lines:
        for category in (line["category"], ALL_CATEGORIES):
            for metric, value in line["metrics"].items():
                groups.setdefault((line["setup"], line["suite"], category, metric), []).append(value)
    cells = []
    for (setup, suite, category, metric), values in groups.items():
        mean, low, high, kind = pool(values)
        cells.append(Cell(setup, suite, category, metric, len(values), mean, low, high, kind))
    return cells


__all__ = ["ALL_CATEGORIES", "Cell", "Z_95", "bootstrap_interval", "pool", "summarise", "wilson_interval"]
