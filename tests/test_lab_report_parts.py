"""The lab's report on its own, from run folders written here by hand (an experiment.json, result
lines and 8 px PNGs; no pipeline): each part's text whole (a table cell, a suite's table, the
settings, the notes, entry ranges), the plan order of result lines, the order of metrics, the
matplotlib check, and `write_report`'s refusals, its files (grids per suite with results, plots
per metric, stale charts removed) and one result per image key.

test_lab.py writes reports of whole experiments; these pin each rule and line one at a time."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipcond.lab import report
from clipcond.lab.report import (
    GRID_PROMPTS,
    REPORT_NAME,
    _cell_text,
    _escaped,
    _in_plan_order,
    _index_ranges,
    _metric_order,
    _notes,
    _settings,
    _suite_table,
    check_report_dependencies,
    write_report,
)
from clipcond.lab.results import image_path
from clipcond.lab.summary import Cell


def cell(setup="a", suite="s", category="c", metric="exact", count=4, mean=0.5, low=0.1, high=0.9, kind="rate"):
    return Cell(setup, suite, category, metric, count, mean, low, high, kind)


# ------------------------------------------------------------------ small parts


def test_report_names() -> None:
    assert (REPORT_NAME, GRID_PROMPTS) == ("report.md", 8)


@pytest.mark.parametrize(
    "name, cell_text",
    [("plain", "plain"), ("a|b", "a\\|b"), ("two\nlines", "two lines"), ("x|\r\ny", "x\\| y"), ("", "")],
)
def test_a_name_is_one_table_cell(name: str, cell_text: str) -> None:
    assert _escaped(name) == cell_text


def test_a_cell_reads_mean_interval_and_count() -> None:
    assert _cell_text(cell(mean=0.5, low=0.1234, high=0.98765, count=12)) == "0.500 [0.123, 0.988] (12)"
    assert _cell_text(None) == "–"


@pytest.mark.parametrize(
    "indexes, text",
    [([], ""), ([4], "4"), ([0, 1, 2, 5, 7, 8], "0-2, 5, 7-8"), ([1, 3], "1, 3"), ([2, 3], "2-3"), ([0, 1, 2], "0-2")],
)
def test_entry_indexes_as_runs(indexes: list[int], text: str) -> None:
    assert _index_ranges(indexes) == text


def test_metrics_come_in_the_judges_order_then_clip_score_then_the_rest_as_they_appear() -> None:
    cells = [cell(metric=m) for m in ("zeta", "clip_score", "exact", "alpha", "objects_found", "exact", "count")]
    assert _metric_order(cells) == ["objects_found", "count", "exact", "clip_score", "zeta", "alpha"]
    assert _metric_order([]) == []


def result(setup="a", suite="s", index=0, seed=0, category="c", metrics=None, key=None, **extra) -> dict:
    line = {
        "key": key or f"{setup}/{suite}/{index}/{seed}",
        "setup": setup,
        "suite": suite,
        "index": index,
        "category": category,
        "prompt": "a red circle",
        "seed": seed,
        "image": image_path(setup, suite, index, seed),
        "metrics": {"exact": True} if metrics is None else metrics,
    }
    line.update(extra)
    return line


def test_result_lines_in_plan_order_setup_suite_index_seed() -> None:
    lines = [
        result("b", "s2", 0, 1),
        result("zz", "s1", 0, 0),  # a setup the record no longer lists: after the listed ones, by name
        result("a", "s2", 1, 0),
        result("b", "s1", 2, 0),
        result("a", "s1", 0, 1),
        result("yy", "s1", 0, 0),
        result("a", "s1", 0, 0),
        result("a", "gone", 0, 0),  # a suite it no longer lists: after s2
        result("a", "s2", 0, 5),
    ]
    ordered = _in_plan_order(lines, ["b", "a"], ["s2", "s1"])
    assert [(x["setup"], x["suite"], x["index"], x["seed"]) for x in ordered] == [
        ("b", "s2", 0, 1),
        ("b", "s1", 2, 0),
        ("a", "s2", 0, 5),
        ("a", "s2", 1, 0),
        ("a", "s1", 0, 0),
        ("a", "s1", 0, 1),
        ("a", "gone", 0, 0),
        ("yy", "s1", 0, 0),
        ("zz", "s1", 0, 0),
    ]


# ------------------------------------------------------------------ a suite's table


def test_a_suites_table_has_a_row_per_category_and_metric_with_a_value() -> None:
    cells = [
        cell("a", "s", "single", "exact", 2, 1.0, 0.5, 1.0),
        cell("b", "s", "single", "exact", 2, 0.5, 0.2, 0.8),
        cell("a", "s", "pairs", "exact", 3, 0.0, 0.0, 0.4),
        cell("a", "s", "(all)", "exact", 5, 0.4, 0.1, 0.7),
        cell("b", "s", "(all)", "exact", 2, 0.5, 0.2, 0.8),
        cell("a", "other", "single", "exact", 9, 0.9, 0.9, 0.9),  # another suite's: not here
    ]
    assert _suite_table(cells, "s", ["a", "b"], ["exact", "clip_score"]) == [
        "| category | metric | a | b |",
        "|---|---|---|---|",
        "| single | exact | 1.000 [0.500, 1.000] (2) | 0.500 [0.200, 0.800] (2) |",
        "| pairs | exact | 0.000 [0.000, 0.400] (3) | – |",
        "| (all) | exact | 0.400 [0.100, 0.700] (5) | 0.500 [0.200, 0.800] (2) |",
    ]


def test_one_category_gets_no_all_row_and_names_are_escaped() -> None:
    cells = [cell("x|y", "s", "only", "m|n"), cell("x|y", "s", "(all)", "m|n")]
    assert _suite_table(cells, "s", ["x|y"], ["m|n"]) == [
        "| category | metric | x\\|y |",
        "|---|---|---|",
        "| only | m\\|n | 0.500 [0.100, 0.900] (4) |",
    ]
    assert _suite_table([], "s", ["a"], ["exact"]) == ["| category | metric | a |", "|---|---|---|"]


# ------------------------------------------------------------------ settings and notes


EXPERIMENT = {
    "name": "demo",
    "fingerprint": "0123456789abcdef0123",
    "settings": {"seeds": [0, 1], "metrics": ["judge"], "height": 32, "width": None},
    "paths": {"pipelines": {"a": "/models/a"}, "suites": {"s": "suites/s.yaml"}, "clip_score_model": "/clip"},
    "setups": [
        {"name": "a", "steps": 4, "guidance_scale": 5.0, "native": False, "pipeline_digest": "abcdef0123456789"},
        {"name": "b|c", "steps": 2, "guidance_scale": 1.5, "native": True, "pipeline_digest": "fedcba9876543210"},
    ],
    "suites": [{"name": "s", "digest": "99887766554433221100"}],
    "suite_prompts": {"s": ["p0", "p1", "p2"]},
    "seeds": [0, 1],
}


def test_the_settings_in_full() -> None:
    lines = [result()] * 3
    assert _settings(EXPERIMENT, lines, expected=12, unreadable=0) == [
        "Fingerprint `0123456789abcdef`; 3 of 12 images (**incomplete**: run the experiment again to finish).",
        "",
        "Seeds [0, 1], metrics ['judge'], image size 32 x pipeline default.",
        "",
        "| setup | pipeline | steps | guidance | native | weights digest |",
        "|---|---|---|---|---|---|",
        "| a | `/models/a` | 4 | 5.0 | False | `abcdef012345` |",
        "| b\\|c | `?` | 2 | 1.5 | True | `fedcba987654` |",
        "",
        "| suite | file | prompts | digest |",
        "|---|---|---|---|",
        "| s | `suites/s.yaml` | 3 | `998877665544` |",
    ]


def test_the_settings_say_complete_torn_lines_and_the_clip_model() -> None:
    record = {**EXPERIMENT, "clip_digest": "c1c2c3c4c5c6c7c8"}
    text = _settings(record, [result()] * 12, expected=12, unreadable=2)
    assert text[0] == (
        "Fingerprint `0123456789abcdef`; 12 of 12 images (complete). 2 line(s) of results.jsonl could not be "
        "read (torn by a kill, or not JSON) and are not counted."
    )
    assert text[-2:] == ["", "CLIP score model: `/clip` (`c1c2c3c4c5c6`)."]
    assert _settings(EXPERIMENT, [result()] * 13, expected=12, unreadable=0)[0].endswith("(complete).")


def test_the_settings_of_a_bare_record() -> None:
    assert _settings({}, [], expected=0, unreadable=0) == [
        "Fingerprint `?`; 0 of 0 images (complete).",
        "",
        "Seeds None, metrics None, image size pipeline default x pipeline default.",
        "",
        "| setup | pipeline | steps | guidance | native | weights digest |",
        "|---|---|---|---|---|---|",
        "",
        "| suite | file | prompts | digest |",
        "|---|---|---|---|",
    ]


def test_the_notes_explain_each_metric_and_name_truncated_prompts() -> None:
    lines = [result(suite="s", index=i, clip_truncated=i in (0, 1, 2, 5)) for i in range(7)] + [
        result(suite="t", index=3, clip_truncated=True),
        result(suite="t", index=3, seed=1, clip_truncated=True),
    ]
    notes = _notes(lines, ["exact", "clip_score", "other"])
    assert notes[:5] == [
        "## Notes",
        "",
        "- `exact`: all objects found, nothing extra, relation true.",
        "- `clip_score`: cosine of the CLIP image and prompt embeddings, in [-1, 1].",
        "- `other`: .",
    ]
    assert notes[5] == (
        "- The judge scores only prompts that carry a scene (shapes-world prompts); text-only prompts have CLIP "
        "score alone. Rates: 95% Wilson interval; means: 95% percentile bootstrap of the mean. Both count each "
        "image (prompt x seed) as independent: the seeds of one prompt agree more often than images of different "
        "prompts, so as statements about the setup on other prompts like these the intervals are too narrow (on "
        "the shipped encoder experiment, 1.2 to 1.8 times); a mean whose images all have one value gets an "
        "interval of zero width."
    )
    assert notes[6] == (
        "- 5 prompt(s) exceed the CLIP context; their CLIP score saw only the start: suite `s` entries 0-2, 5; "
        "suite `t` entry 3."
    )
    assert len(notes) == 7
    assert len(_notes([result()], [])) == 3  # no metric, no truncation: the heading and the pooling note


# ------------------------------------------------------------------ matplotlib


def test_a_missing_matplotlib_is_named_with_what_to_install(monkeypatch) -> None:
    check_report_dependencies()  # installed here
    monkeypatch.setattr(report.importlib.util, "find_spec", lambda name: None if name == "matplotlib" else object())
    with pytest.raises(ImportError) as error:
        check_report_dependencies()
    assert str(error.value) == "the experiment report draws its charts with matplotlib: pip install matplotlib"


# ------------------------------------------------------------------ write_report


def run_folder(tmp_path: Path, lines: list[dict], record: dict | None = None) -> Path:
    """A run folder: `record` as experiment.json, `lines` as results.jsonl, each line's PNG."""
    folder = tmp_path / "run"
    folder.mkdir(parents=True)
    (folder / "experiment.json").write_text(json.dumps(EXPERIMENT if record is None else record))
    (folder / "results.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    rng = np.random.default_rng(0)
    for line in lines:
        path = folder / line["image"]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
    return folder


def test_a_folder_without_a_record_is_no_run_folder(tmp_path) -> None:
    with pytest.raises(FileNotFoundError) as error:
        write_report(tmp_path)
    assert str(error.value) == f"{tmp_path} is not an experiment's run folder: experiment.json is missing"


@pytest.mark.parametrize(
    "text, message",
    [
        ("{", "is not JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
        (b"\xff", "is not JSON ("),
        ("[1]", "is not a JSON object"),
    ],
)
def test_a_record_that_is_no_json_object_is_refused(tmp_path, text, message) -> None:
    path = tmp_path / "experiment.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError) as error:
        write_report(tmp_path)
    assert str(error.value).startswith(f"{path} {message}")
    assert str(error.value).endswith("; re-run the experiment to rewrite it")
    # one line, no chained parse error
    assert error.value.__cause__ is None and (error.value.__context__ is None or error.value.__suppress_context__)


def test_a_report_of_a_finished_run(tmp_path) -> None:
    lines = [
        result("a", "s", index, seed, category=("single" if index < 2 else "pairs"), metrics={"exact": index != 1})
        for index in range(3)
        for seed in (0, 1)
    ]
    lines += [
        dict(line, setup="b|c", key=line["key"] + "b", image=image_path("b|c", "s", line["index"], line["seed"]))
        for line in lines
    ]
    folder = run_folder(tmp_path, lines)
    (folder / "plots").mkdir()
    (folder / "plots" / "old_metric.png").write_bytes(b"x")
    (folder / "grids").mkdir()
    (folder / "grids" / "old_suite.png").write_bytes(b"x")
    path = write_report(folder)
    assert path == folder / "report.md"
    text = path.read_text(encoding="utf-8").splitlines()
    assert text[:3] == ["# Experiment: demo", "", "Fingerprint `0123456789abcdef`; 12 of 12 images (complete)."]
    suite_at = text.index("## Suite `s`")
    assert text[suite_at + 2 : suite_at + 7] == [
        "| category | metric | a | b\\|c |",
        "|---|---|---|---|",
        text[suite_at + 4],
        text[suite_at + 5],
        text[suite_at + 6],
    ]
    assert text[suite_at + 4].startswith("| single | exact | 0.500 [") and text[suite_at + 4].endswith("(4) |")
    assert text[suite_at + 5].startswith("| pairs | exact | 1.000 [")
    assert text[suite_at + 6].startswith("| (all) | exact | 0.667 [") and text[suite_at + 6].endswith("(6) |")
    assert "![s: first 8 prompts, every setup and seed](grids/s.png)" in text
    assert "## Plots" in text and "![exact](plots/exact.png)" in text
    assert text[-1].startswith("- The judge scores only prompts")
    assert sorted(p.name for p in (folder / "plots").iterdir()) == ["exact.png"]  # the stale chart is gone
    assert sorted(p.name for p in (folder / "grids").iterdir()) == ["s.png"]
    with Image.open(folder / "grids" / "s.png") as grid:
        assert grid.format == "PNG"
    assert not list(folder.glob("*.tmp*")) and not list((folder / "grids").glob("*.tmp*"))


def test_a_repeated_key_counts_once_and_the_report_is_the_same_in_any_line_order(tmp_path) -> None:
    lines = [result("a", "s", 0, seed, metrics={"exact": seed == 0}) for seed in (0, 1)]
    repeated = lines + [dict(lines[1], metrics={"exact": True})]  # a copied line: the first stands
    first = write_report(run_folder(tmp_path / "x", repeated)).read_text()
    assert "2 of 12 images" in first
    assert "| c | exact | 0.500 [" in first
    second = write_report(run_folder(tmp_path / "y", list(reversed(lines)))).read_text()
    assert first == second


def test_a_run_without_results_has_no_grid_nor_plots(tmp_path) -> None:
    folder = run_folder(tmp_path, [])
    text = write_report(folder).read_text().splitlines()
    assert (
        "Fingerprint `0123456789abcdef`; 0 of 12 images (**incomplete**: run the experiment again to finish)." in text
    )
    assert "## Plots" not in text and not (folder / "grids").exists() and not (folder / "plots").exists()
    assert text[text.index("## Suite `s`") + 2 :][:3] == ["| category | metric | a | b\\|c |", "|---|---|---|---|", ""]


def test_a_damaged_result_line_or_image_is_refused(tmp_path) -> None:
    folder = run_folder(tmp_path, [result()])
    (folder / result()["image"]).write_bytes(b"not a png")
    with pytest.raises(ValueError) as error:
        write_report(folder)
    assert str(error.value).startswith(f"{folder / 'results.jsonl'}, line 1: its image ")
    assert not (folder / "report.md").exists()


def test_the_settings_of_a_record_without_paths_or_prompts() -> None:
    record = {key: value for key, value in EXPERIMENT.items() if key not in ("paths", "suite_prompts")}
    record["settings"] = {**record["settings"], "width": 48}
    text = _settings(record, [], expected=0, unreadable=0)
    assert text[2] == "Seeds [0, 1], metrics ['judge'], image size 32 x 48."
    assert text[6:8] == [
        "| a | `?` | 4 | 5.0 | False | `abcdef012345` |",
        "| b\\|c | `?` | 2 | 1.5 | True | `fedcba987654` |",
    ]
    assert text[-1] == "| s | `?` | 0 | `998877665544` |"
    no_suites = {**EXPERIMENT, "paths": {"pipelines": {}}}
    assert _settings(no_suites, [], expected=0, unreadable=0)[-1] == "| s | `?` | 3 | `998877665544` |"


def test_the_report_of_a_bare_record_is_named_by_its_folder(tmp_path) -> None:
    folder = run_folder(tmp_path, [], record={})
    assert write_report(folder).read_text().splitlines()[:3] == [
        "# Experiment: run",
        "",
        "Fingerprint `?`; 0 of 0 images (complete).",
    ]


def test_the_report_counts_torn_lines(tmp_path) -> None:
    folder = run_folder(tmp_path, [result()])
    with open(folder / "results.jsonl", "a") as results:
        results.write('{"key": "torn')
    text = write_report(folder).read_text()
    assert "1 line(s) of results.jsonl could not be read (torn by a kill, or not JSON) and are not counted." in text


def test_the_reports_lines_around_its_tables_grids_and_plots(tmp_path) -> None:
    lines = [result("a", "s", index, 0, metrics={"exact": True, "clip_score": 0.5}) for index in range(2)]
    text = write_report(run_folder(tmp_path, lines)).read_text().splitlines()
    suite_at = text.index("## Suite `s`")
    assert text[suite_at - 1] == "" and text[suite_at + 1] == ""
    grid_at = text.index("![s: first 8 prompts, every setup and seed](grids/s.png)")
    assert text[grid_at - 1] == "" and text[grid_at + 1] == ""
    plots_at = text.index("## Plots")
    assert text[plots_at + 1 : plots_at + 6] == [
        "",
        "![exact](plots/exact.png)",
        "",
        "![clip_score](plots/clip_score.png)",
        "",
    ]
    assert text[plots_at + 6] == "## Notes"


def test_the_grid_shows_the_suites_first_eight_prompts(tmp_path) -> None:
    from clipcond.lab.grids import suite_grid

    lines = [result("a", "s", index, seed) for index in range(10) for seed in (0, 1)]
    folder = run_folder(tmp_path, lines)
    write_report(folder)
    with Image.open(folder / "grids" / "s.png") as written:
        pixels = np.asarray(written.convert("RGB"))
    ordered = _in_plan_order(lines, ["a", "b|c"], ["s"])
    expected = np.asarray(suite_grid(folder, ordered, "s", ["a", "b|c"], [0, 1], max_prompts=8))
    assert pixels.shape == expected.shape and (pixels == expected).all()
    every = np.asarray(suite_grid(folder, ordered, "s", ["a", "b|c"], [0, 1], max_prompts=10))
    assert every.shape[0] > pixels.shape[0]
