"""Bar charts of an experiment: one PNG per metric, categories along x, one bar per setup,
95% intervals as error bars.

Drawn on a bare `matplotlib.figure.Figure` (rendered by the Agg backend), never through
pyplot: no display is needed and no global backend state is touched. matplotlib is imported
only here, when a chart is drawn.

A chart is drawn again only when what it shows changed. Each PNG carries, in a text chunk,
a key of its cells, title, this module's source and matplotlib's version; a chart on disk
whose key matches and which decodes whole is kept as it is: drawing is most of a
report's time, and `--report-only` or a rerun that draws one image leaves most charts as
they were.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path

from clipcond.lab.summary import ALL_CATEGORIES, Cell
from clipcond.output_paths import write_atomically

CHART_KEY = "clipcond-chart"  # the PNG text chunk holding what a chart was drawn from


def chart_key(cells: Sequence[Cell], metric: str, title: str | None) -> str:
    """A digest of everything a chart is drawn from: its cells in order, metric and title,
    the drawing code (this file) and matplotlib's version."""
    import matplotlib

    shown = {
        "cells": [dataclasses.asdict(cell) for cell in cells],
        "metric": metric,
        "title": title,
        "code": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "matplotlib": matplotlib.__version__,
    }
    return hashlib.sha256(json.dumps(shown, sort_keys=True).encode("utf-8")).hexdigest()


def _stored_key(path: Path) -> str | None:
    """The chart key `path` was drawn with; None when it is missing, damaged or has none."""
    from PIL import Image

    try:
        with Image.open(path) as image:  # `.text` decodes the whole file first (text chunks may
            return image.text.get(CHART_KEY)  # follow the pixels): a cut file or bad pixel data fail
    except Exception:  # missing, cut, flipped bits, not a PNG: whatever PIL cannot read back is drawn again
        return None


def plot_metric(cells: Sequence[Cell], metric: str, path: str | Path, title: str | None = None) -> Path:
    """Write a grouped bar chart of one metric to `path` (PNG), unless `path` already holds
    the same chart (see the module's docstring).

    Args:
        cells: pooled results (`clipcond.lab.summary.summarise`); only `metric`'s are drawn.
        metric: which metric.
        path: the PNG to write (atomically).
        title: chart title; the metric's name when None.

    Returns:
        `path`, as a `Path`.
    """
    from matplotlib.figure import Figure

    chosen = [cell for cell in cells if cell.metric == metric]
    if not chosen:
        raise ValueError(f"no results for metric {metric!r}")
    path = Path(path)
    key = chart_key(chosen, metric, title)
    if _stored_key(path) == key:
        return path
    setups = list(dict.fromkeys(cell.setup for cell in chosen))
    groups = list(dict.fromkeys((cell.suite, cell.category) for cell in chosen))
    suites = list(dict.fromkeys(suite for suite, _ in groups))
    # each suite's categories in order of appearance, its pooled "(all)" last
    groups.sort(key=lambda group: (suites.index(group[0]), group[1] == ALL_CATEGORIES))
    by_key = {(cell.setup, cell.suite, cell.category): cell for cell in chosen}
    width = 0.8 / len(setups)
    figure = Figure(figsize=(max(6.0, 0.6 * len(groups) * max(1, len(setups)) ** 0.5 + 2), 4.5), layout="constrained")
    axes = figure.subplots()
    for k, setup in enumerate(setups):
        xs, means, below, above = [], [], [], []
        for g, (suite, category) in enumerate(groups):
            cell = by_key.get((setup, suite, category))
            if cell is None:
                continue
            xs.append(g - 0.4 + width * (k + 0.5))
            means.append(cell.mean)
            below.append(max(0.0, cell.mean - cell.low))
            above.append(max(0.0, cell.high - cell.mean))
        axes.bar(xs, means, width=width, yerr=[below, above], capsize=3, label=setup)
    axes.set_xticks(range(len(groups)), [f"{suite}/{category}" for suite, category in groups], rotation=45, ha="right")
    if all(cell.kind == "rate" for cell in chosen) or metric == "objects_found":
        axes.set_ylim(0.0, 1.0)
        axes.set_ylabel(
            f"{metric} (rate, 95% Wilson interval)" if chosen[0].kind == "rate" else f"{metric} (mean, 95% bootstrap)"
        )
    else:
        axes.set_ylabel(f"{metric} (mean, 95% bootstrap interval)")
    axes.set_title(title or metric)
    axes.legend(title="setup", fontsize="small")
    axes.grid(axis="y", alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    encoded = io.BytesIO()
    figure.savefig(encoded, format="png", dpi=100, metadata={CHART_KEY: key})
    write_atomically(path, encoded.getvalue())  # a kill midway leaves the old chart, not half a new one
    return path


__all__ = ["CHART_KEY", "chart_key", "plot_metric"]
