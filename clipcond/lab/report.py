"""The report of an experiment, written from its run folder alone (experiment.json and
results.jsonl), so it can be rebuilt at any time (`clipcond experiment --report-only`):

    report.md             settings, then per suite a table: (category, metric) x setup, each cell
                          "mean [95% interval] (n)"; rates use Wilson intervals, means a bootstrap
    plots/<metric>.png    bars per suite/category, one per setup, with the intervals
    grids/<suite>.png     the suite's first prompts under every setup and seed, side by side
"""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path
from typing import Any

from clipcond.lab.grids import suite_grid
from clipcond.lab.metrics import JUDGE_VALUES, METRICS
from clipcond.lab.plots import plot_metric
from clipcond.lab.results import RESULTS_NAME, read_results
from clipcond.lab.summary import ALL_CATEGORIES, Cell, summarise
from clipcond.output_paths import write_atomically

REPORT_NAME = "report.md"
GRID_PROMPTS = 8


def _metric_order(cells: list[Cell]) -> list[str]:
    present = list(dict.fromkeys(cell.metric for cell in cells))
    known = [name for name in [*JUDGE_VALUES, "clip_score"] if name in present]
    return known + [name for name in present if name not in known]


def _escaped(name: str) -> str:
    """A name as one markdown table cell: `|` escaped as markdown does, a line break a space.

    Inside a code span too: GFM splits cells before it reads code spans, and renders `\\|` as `|`."""
    return " ".join(name.replace("|", "\\|").splitlines())


def _cell_text(cell: Cell | None) -> str:
    if cell is None:
        return "–"
    return f"{cell.mean:.3f} [{cell.low:.3f}, {cell.high:.3f}] ({cell.count})"


def _suite_table(cells: list[Cell], suite: str, setups: list[str], metrics: list[str]) -> list[str]:
    mine = [cell for cell in cells if cell.suite == suite]
    by_key = {(cell.setup, cell.category, cell.metric): cell for cell in mine}
    categories = [c for c in dict.fromkeys(cell.category for cell in mine) if c != ALL_CATEGORIES]
    if len(categories) > 1:
        categories.append(ALL_CATEGORIES)
    header = " | ".join(_escaped(setup) for setup in setups)
    rows = ["| category | metric | " + header + " |", "|---|---|" + "---|" * len(setups)]
    for category in categories:
        for metric in metrics:
            values = [by_key.get((setup, category, metric)) for setup in setups]
            if any(values):
                rows.append(
                    f"| {_escaped(category)} | {_escaped(metric)} | " + " | ".join(_cell_text(v) for v in values) + " |"
                )
    return rows


def _settings(experiment: dict[str, Any], lines: list[dict[str, Any]], expected: int, unreadable: int) -> list[str]:
    settings = experiment.get("settings", {})
    paths = experiment.get("paths", {})
    torn = (
        f" {unreadable} line(s) of {RESULTS_NAME} could not be read (torn by a kill, or not JSON) and are not counted."
        if unreadable
        else ""
    )
    text = [
        f"Fingerprint `{experiment.get('fingerprint', '?')[:16]}`; {len(lines)} of {expected} images "
        + ("(complete)." if len(lines) >= expected else "(**incomplete**: run the experiment again to finish).")
        + torn,
        "",
        f"Seeds {settings.get('seeds')}, metrics {settings.get('metrics')}, image size "
        f"{settings.get('height') or 'pipeline default'} x {settings.get('width') or 'pipeline default'}.",
        "",
        "| setup | pipeline | steps | guidance | native | weights digest |",
        "|---|---|---|---|---|---|",
    ]
    for setup in experiment.get("setups", []):
        text.append(
            f"| {_escaped(setup['name'])} | `{_escaped(paths.get('pipelines', {}).get(setup['name'], '?'))}` | "
            f"{setup['steps']} | {setup['guidance_scale']} | {setup['native']} | `{setup['pipeline_digest'][:12]}` |"
        )
    text += ["", "| suite | file | prompts | digest |", "|---|---|---|---|"]
    prompts = experiment.get("suite_prompts", {})
    for suite in experiment.get("suites", []):
        file = _escaped(paths.get("suites", {}).get(suite["name"], "?"))
        text.append(
            f"| {_escaped(suite['name'])} | `{file}` | {len(prompts.get(suite['name'], []))} | `{suite['digest'][:12]}` |"
        )
    if experiment.get("clip_digest"):
        text += ["", f"CLIP score model: `{paths.get('clip_score_model')}` (`{experiment['clip_digest'][:12]}`)."]
    return text


def _notes(lines: list[dict[str, Any]], metrics: list[str]) -> list[str]:
    notes = ["## Notes", ""]
    for name in metrics:
        meaning = JUDGE_VALUES.get(name) or METRICS.get(name, "")
        notes.append(f"- `{name}`: {meaning}.")
    notes.append(
        "- The judge scores only prompts that carry a scene (shapes-world prompts); text-only prompts "
        "have CLIP score alone. Rates: 95% Wilson interval; means: 95% percentile bootstrap of the mean. "
        "Both count each image (prompt x seed) as independent: the seeds of one prompt agree more often "
        "than images of different prompts, so as statements about the setup on other prompts like these the "
        "intervals are too narrow (on the shipped encoder experiment, 1.2 to 1.8 times); a mean whose images "
        "all have one value gets an interval of zero width."
    )
    truncated: dict[str, set[int]] = {}
    for line in lines:
        if line.get("clip_truncated"):
            truncated.setdefault(line["suite"], set()).add(line["index"])
    if truncated:
        # suite and entry index, as the grids label their rows: long prompts often share their start
        notes.append(
            f"- {sum(map(len, truncated.values()))} prompt(s) exceed the CLIP context; their CLIP score saw only "
            "the start: "
            + "; ".join(
                f"suite `{suite}` entr{'y' if len(indexes) == 1 else 'ies'} {_index_ranges(sorted(indexes))}"
                for suite, indexes in truncated.items()
            )
            + "."
        )
    return notes


def _index_ranges(indexes: list[int]) -> str:
    """Sorted entry indexes as runs: [0, 1, 2, 5, 7, 8] -> "0-2, 5, 7-8"."""
    runs: list[list[int]] = []
    for index in indexes:
        if runs and index == runs[-1][-1] + 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    return ", ".join(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)


def _in_plan_order(lines: list[dict[str, Any]], setups: list[str], suites: list[str]) -> list[dict[str, Any]]:
    """`lines` in the run's plan order: setup, suite (as experiment.json lists them), entry
    index, seed. A resumed run appends its redrawn images at the end of results.jsonl; sorted,
    the same results give the same report (categories in the order of their first entry)."""

    def position(names: list[str], name: str) -> tuple[int, str]:
        return (names.index(name), "") if name in names else (len(names), name)

    return sorted(
        lines,
        key=lambda line: (
            position(setups, line["setup"]),
            position(suites, line["suite"]),
            line["index"],
            line["seed"],
        ),
    )


def check_report_dependencies() -> None:
    """Raise an `ImportError` saying what to install when matplotlib (the charts) is missing."""
    if importlib.util.find_spec("matplotlib") is None:
        raise ImportError("the experiment report draws its charts with matplotlib: pip install matplotlib")


def write_report(run_folder: str | Path) -> Path:
    """Write report.md, plots/ and grids/ into an experiment's run folder.

    Returns:
        The path of report.md.

    Raises:
        FileNotFoundError: the folder holds no experiment.json (not an experiment's output).
        ValueError: experiment.json is not JSON, or a line of results.jsonl is not a result
            the runner writes or its image is missing (`read_results` with `strict`).
    """
    check_report_dependencies()
    run_folder = Path(run_folder)
    record_path = run_folder / "experiment.json"
    if not record_path.is_file():
        raise FileNotFoundError(f"{run_folder} is not an experiment's run folder: experiment.json is missing")
    try:
        experiment = json.loads(record_path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ValueError(f"{record_path} is not JSON ({error}); re-run the experiment to rewrite it") from None
    if not isinstance(experiment, dict):
        raise ValueError(f"{record_path} is not a JSON object; re-run the experiment to rewrite it")
    lines, unreadable = read_results(run_folder / RESULTS_NAME, strict=True)
    first: dict[str, dict[str, Any]] = {}
    for line in lines:  # one line per image, the first, as a run keeps (a copied file may repeat lines)
        first.setdefault(line["key"], line)
    setups = [setup["name"] for setup in experiment.get("setups", [])]
    suites = [suite["name"] for suite in experiment.get("suites", [])]
    lines = _in_plan_order(list(first.values()), setups, suites)
    seeds = experiment.get("seeds", [])
    expected = len(setups) * len(seeds) * sum(len(p) for p in experiment.get("suite_prompts", {}).values())
    cells = summarise(lines)
    metrics = _metric_order(cells)

    written: set[Path] = set()
    text = [
        f"# Experiment: {experiment.get('name', run_folder.name)}",
        "",
        *_settings(experiment, lines, expected, unreadable),
        "",
    ]
    for suite in suites:
        text += [f"## Suite `{suite}`", "", *_suite_table(cells, suite, setups, metrics), ""]
        if any(line["suite"] == suite for line in lines):
            grid_path = run_folder / "grids" / f"{suite}.png"
            grid_path.parent.mkdir(parents=True, exist_ok=True)
            encoded = io.BytesIO()
            suite_grid(run_folder, lines, suite, setups, seeds, max_prompts=GRID_PROMPTS).save(encoded, format="PNG")
            write_atomically(grid_path, encoded.getvalue())
            written.add(grid_path)
            text += [f"![{suite}: first {GRID_PROMPTS} prompts, every setup and seed](grids/{suite}.png)", ""]
    if cells:
        text += ["## Plots", ""]
        for metric in metrics:
            written.add(plot_metric(cells, metric, run_folder / "plots" / f"{metric}.png"))
            text += [f"![{metric}](plots/{metric}.png)", ""]
    text += _notes(lines, metrics)
    for folder in ("plots", "grids"):  # charts of metrics or suites the experiment no longer has
        for stale in (run_folder / folder).glob("*.png"):
            if stale not in written:
                stale.unlink()
    path = run_folder / REPORT_NAME
    write_atomically(path, ("\n".join(text) + "\n").encode("utf-8"))
    return path


__all__ = ["REPORT_NAME", "check_report_dependencies", "write_report"]
