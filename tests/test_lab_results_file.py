"""results.jsonl and experiment.json edited by hand or damaged: a run drops the bad line and
draws that image again, `--report-only` says which line in one line; neither ends in a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from lab_helpers import record_pipeline_calls, save_tiny_clip, save_tiny_pipeline, write_experiment

SUITE = {
    "name": "mini",
    "prompts": [
        {"category": "single", "prompt": "a red circle", "objects": [["red", "circle"]]},
        {"category": "free", "prompt": "a lighthouse at dusk"},
    ],
}


def _config(folder: Path, models: dict[str, Path]) -> Path:
    (folder / "mini.yaml").write_text(yaml.safe_dump(SUITE, sort_keys=False))
    config = {
        "name": "edited",
        "suites": [str(folder / "mini.yaml")],
        "setups": [{"name": "a", "pipeline": str(models["a"])}],
        "seeds": [0, 1],
        "steps": 2,
        "guidance_scale": 2.0,
        "metrics": ["judge", "clip_score"],
        "clip_score_model": str(models["clip"]),
        "output_dir": str(folder / "out"),
        "batch_size": 4,
    }
    return write_experiment(folder, config)


def _experiment(config: Path, *options: str) -> int:
    from clipcond.cli import main

    return main(["experiment", str(config), "--no-progress", *options])


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """The run folder of a finished 4-image run (setup a, 2 prompts x seeds 0 and 1)."""
    root = tmp_path_factory.mktemp("lab_results_file")
    models = {"a": save_tiny_pipeline(root / "a", 0), "clip": save_tiny_clip(root)}
    (root / "run").mkdir()
    config = _config(root / "run", models)
    assert _experiment(config) == 0
    (root / "models.json").write_text(json.dumps({name: str(path) for name, path in models.items()}))
    return root


def _copy(finished: Path, folder: Path) -> Path:
    """A copy of the finished run in `folder`, and its config."""
    folder.mkdir()
    shutil.copytree(finished / "run" / "out", folder / "out")
    models = {name: Path(path) for name, path in json.loads((finished / "models.json").read_text()).items()}
    return _config(folder, models)


def _lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _set(name, value):
    return lambda line: line.__setitem__(name, value)


def _set_metric(name, value):
    return lambda line: line["metrics"].__setitem__(name, value)


def _pop(name):
    return lambda line: line.pop(name)


EDITS = {
    "key a list": _set("key", ["x"]),
    "key a number": _set("key", 5),
    "category missing": _pop("category"),
    "setup missing": _pop("setup"),
    "index missing": _pop("index"),
    "prompt missing": _pop("prompt"),
    "metric yes": _set_metric("exact", "yes"),
    "metric null": _set_metric("exact", None),
    "metric 1 for true": _set_metric("exact", 1),
    "clip_score x": _set_metric("clip_score", "x"),
    "image missing": _set("image", "images/zzz.png"),
    "image another seed's": _set("image", "images/a/mini/0-1.png"),
    "seed not the job's": _set("seed", 99),
}


@pytest.mark.parametrize("edit", EDITS.values(), ids=EDITS.keys())
def test_an_edited_results_line_is_one_error_line_and_redrawn_on_a_rerun(finished, tmp_path, monkeypatch, capsys, edit):
    """--report-only names results.jsonl and the line; a rerun drops that line only, draws its
    one image again and leaves one well-formed line per image."""
    config = _copy(finished, tmp_path / "edited")
    out = tmp_path / "edited" / "out"
    original = _lines(out)
    number = next(i for i, line in enumerate(original) if (line["index"], line["seed"]) == (0, 0))
    edited = json.loads(json.dumps(original))
    edit(edited[number])
    (out / "results.jsonl").write_text("".join(json.dumps(line) + "\n" for line in edited))
    capsys.readouterr()

    assert _experiment(config, "--report-only") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"results.jsonl, line {number + 1}:" in err

    calls = record_pipeline_calls(monkeypatch)
    assert _experiment(config) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "dropped 1 result line(s)" in err, err
    assert calls == [1]
    after = _lines(out)
    assert sorted(line["key"] for line in after) == sorted(line["key"] for line in original)
    redrawn = next(line for line in after if line["key"] == original[number]["key"])
    fields = ("setup", "suite", "index", "category", "prompt", "seed", "image")
    assert {name: redrawn[name] for name in fields} == {name: original[number][name] for name in fields}
    assert set(redrawn["metrics"]) == set(original[number]["metrics"])
    assert _experiment(config, "--report-only") == 0


DAMAGED_PNGS = {
    "cut in half": lambda data: data[: len(data) // 2],  # an interrupted copy or rsync
    "garbage bytes": lambda data: b"not a png at all" * 10,
    "one bit flipped in the pixels": lambda data: data[:-30] + bytes([data[-30] ^ 1]) + data[-29:],
}


@pytest.mark.parametrize("damage", DAMAGED_PNGS.values(), ids=DAMAGED_PNGS.keys())
def test_a_damaged_png_is_one_error_line_naming_it_and_redrawn_on_a_rerun(
    finished, tmp_path, monkeypatch, capsys, damage
):
    """--report-only names the PNG that does not read in one line; a rerun drops its line,
    draws that one image again (equal to the original within the 1 grey level a batch of
    another size moves it) and the report is written."""
    import numpy as np
    from PIL import Image

    config = _copy(finished, tmp_path / "damaged")
    out = tmp_path / "damaged" / "out"
    png = out / "images" / "a" / "mini" / "0-1.png"
    with Image.open(png) as image:
        original = np.asarray(image.convert("RGB"), dtype=np.int16)
    png.write_bytes(damage(png.read_bytes()))
    capsys.readouterr()

    assert _experiment(config, "--report-only") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert str(png) in err and "cannot be read as a PNG" in err, err

    calls = record_pipeline_calls(monkeypatch)
    assert _experiment(config) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "dropped 1 result line(s)" in err, err
    assert calls == [1]
    with Image.open(png) as image:
        assert np.abs(np.asarray(image.convert("RGB"), dtype=np.int16) - original).max() <= 1
    assert len(_lines(out)) == 4
    assert _experiment(config, "--report-only") == 0


def test_report_only_counts_torn_lines_in_the_report(finished, tmp_path) -> None:
    """A line torn by a kill is not an error for --report-only (a run redraws it), but the
    report says how many lines it could not read, next to the image count."""
    config = _copy(finished, tmp_path / "torn")
    out = tmp_path / "torn" / "out"
    assert _experiment(config, "--report-only") == 0
    assert "could not be read" not in (out / "report.md").read_text()
    text = (out / "results.jsonl").read_text()
    (out / "results.jsonl").write_text(text + text.splitlines()[0][:40] + "\n")
    assert _experiment(config, "--report-only") == 0
    report = (out / "report.md").read_text()
    assert "4 of 4 images (complete). 1 line(s) of results.jsonl could not be read" in report


def test_the_report_depends_on_the_results_not_their_order_in_the_file(finished, tmp_path) -> None:
    """A resume appends redrawn images' lines at the end of results.jsonl: the same results in
    another order give the same report.md (rows, means and bootstrap bounds) and charts."""
    config = _copy(finished, tmp_path / "order")
    out = tmp_path / "order" / "out"
    assert _experiment(config, "--report-only") == 0
    report = (out / "report.md").read_text()
    charts = {path.name: path.read_bytes() for path in (out / "plots").glob("*.png")}
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len({json.loads(line)["category"] for line in lines}) == 2  # two categories: a row order to keep
    for order in (lines[::-1], lines[1:] + lines[:1]):
        (out / "results.jsonl").write_text("".join(line + "\n" for line in order))
        assert _experiment(config, "--report-only") == 0
        assert (out / "report.md").read_text() == report
        assert {path.name: path.read_bytes() for path in (out / "plots").glob("*.png")} == charts


def test_report_only_names_an_experiment_json_that_is_not_json(finished, tmp_path, capsys) -> None:
    config = _copy(finished, tmp_path / "edited")
    (tmp_path / "edited" / "out" / "experiment.json").write_text("{")
    capsys.readouterr()
    assert _experiment(config, "--report-only") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "experiment.json" in err, err


def test_edited_file_hash_cache_entries_are_hashed_again(finished, tmp_path, monkeypatch, capsys) -> None:
    """experiment.json's file_digests entries that are not [size, mtime, sha256]: the files are
    read again, their digests are unchanged and nothing is drawn."""
    config = _copy(finished, tmp_path / "edited")
    record_path = tmp_path / "edited" / "out" / "experiment.json"
    record = json.loads(record_path.read_text())
    assert record["file_digests"]
    record["file_digests"] = {path: 5 for path in record["file_digests"]}
    record_path.write_text(json.dumps(record))
    calls = record_pipeline_calls(monkeypatch)
    assert _experiment(config) == 0
    assert calls == [] and "Traceback" not in capsys.readouterr().err


def test_a_bar_or_line_break_in_a_name_keeps_the_report_table_whole() -> None:
    """A category or setup name with `|` or a newline is one cell: `|` escaped as `\\|`."""
    import re

    from clipcond.lab.report import _suite_table
    from clipcond.lab.summary import summarise

    line = {"setup": "a|b", "suite": "s", "category": "left|right\nup", "metrics": {"exact": True}}
    rows = _suite_table(summarise([line, {**line, "category": "plain"}]), "s", ["a|b"], ["exact"])
    assert len(rows) == 2 + 2 * 1 + 1  # header, rule, two categories and (all)
    assert all(len(re.split(r"(?<!\\)\|", row)) == 5 for row in rows), rows
    assert "left\\|right up" in rows[2] and "a\\|b" in rows[0]


def test_a_bar_in_a_pipeline_or_suite_path_keeps_the_settings_tables_whole() -> None:
    """A `|` inside a code span still splits a GFM table cell unless escaped: markdown-it-py's
    GFM table parser reads each settings row as its header's cells, the paths whole."""
    markdown_it = pytest.importorskip("markdown_it")
    from clipcond.lab.report import _settings

    experiment = {
        "setups": [{"name": "a", "steps": 2, "guidance_scale": 2.0, "native": False, "pipeline_digest": "0" * 64}],
        "suites": [{"name": "s", "digest": "1" * 64}],
        "suite_prompts": {"s": [{}, {}]},
        "paths": {"pipelines": {"a": "/m/pipe|v2"}, "suites": {"s": "/m/suite|x.yaml"}},
    }
    tokens = markdown_it.MarkdownIt("gfm-like").parse("\n".join(_settings(experiment, [], 2, 0)))
    rows, row = [], None
    for token in tokens:
        if token.type == "tr_open":
            row = []
        elif token.type == "inline" and row is not None:
            row.append(markdown_it.MarkdownIt("gfm-like").renderInline(token.content))
        elif token.type == "tr_close":
            rows.append(row)
            row = None
    assert [len(row) for row in rows] == [6, 6, 4, 4], rows
    assert rows[1][1] == "<code>/m/pipe|v2</code>" and rows[3][1] == "<code>/m/suite|x.yaml</code>", rows


def test_the_note_on_prompts_past_the_clip_context_names_each_cut_entry() -> None:
    """Long prompts often share their first 60 characters; the note names each cut entry by
    suite and index (as the grids label their rows), not by a start they all share."""
    import re

    from clipcond.lab.report import _notes

    start = "a clean flat illustration in a minimal vector style, drawn with care, "
    cut = {("long", 0), ("long", 1), ("long", 2), ("long", 4), ("mix", 3)}
    lines = [
        {"suite": suite, "index": index, "prompt": f"{start}object {index}", "clip_truncated": (suite, index) in cut}
        for suite, index in [*cut, ("long", 3), ("mix", 0)]
        for _seed in (0, 1)
    ]
    note = next(line for line in _notes(lines, []) if "exceed the CLIP context" in line)
    assert note.startswith(f"- {len(cut)} prompt(s) exceed"), note
    named = set()
    for suite, ranges in re.findall(r"suite `(\w+)` entr(?:y|ies) ([\d, -]+)", note):
        for run in ranges.strip(" ,").split(", "):
            first, _, last = run.partition("-")
            named |= {(suite, index) for index in range(int(first), int(last or first) + 1)}
    assert named == cut, note


def _two_pending(finished: Path, folder: Path) -> tuple[Path, Path]:
    """A copy of the finished run whose last two lines are gone (two images to draw again)."""
    config = _copy(finished, folder)
    path = folder / "out" / "results.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in _lines(folder / "out")[:2]))
    return config, path


def _run_failing(config: Path, target: str, error: BaseException, monkeypatch, capsys) -> tuple[int, str]:
    """The exit status and stderr of the experiment with `target` (a runner function) raising `error`."""

    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(target, failing)
    capsys.readouterr()
    status = _experiment(config)
    return status, capsys.readouterr().err


def test_ctrl_c_during_a_run_is_one_line_and_exit_130(finished, tmp_path, monkeypatch, capsys) -> None:
    config, path = _two_pending(finished, tmp_path / "edited")
    before = path.read_bytes()
    status, err = _run_failing(config, "clipcond.lab.runner._generate", KeyboardInterrupt(), monkeypatch, capsys)
    assert status == 130
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "interrupted; 2 results kept, re-run to continue"
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    "error", [OSError(28, "No space left on device"), PermissionError(13, "Permission denied", "results.jsonl")]
)
def test_a_full_disk_or_read_only_folder_is_one_line_naming_the_file(finished, tmp_path, monkeypatch, capsys, error):
    config, path = _two_pending(finished, tmp_path / "edited")
    before = path.read_bytes()
    status, err = _run_failing(config, "clipcond.lab.runner.append_results", error, monkeypatch, capsys)
    assert status == 1
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in err and len(errors) == 1 and errors == err.strip().splitlines()[-1:], err
    assert error.strerror in errors[0]
    assert (error.filename or str(tmp_path / "edited" / "out")) in errors[0]
    assert path.read_bytes() == before


def test_the_pass_fail_metrics_read_back_are_the_judges() -> None:
    """results.py checks the judge's pass/fail values by name, without importing the judge
    (torch): the two lists must stay one."""
    from clipcond.lab import results
    from clipcond.lab.metrics import JUDGE_VALUES

    assert set(results._PASS_FAIL) == set(JUDGE_VALUES) - {"objects_found"}


def test_an_image_is_not_saved_into_a_run_folder_removed_while_the_run_went_on(tmp_path) -> None:
    """The runner's images go through `save_image`, which makes folders below the run folder
    only: a run folder removed midway (``rm -rf``) is named in a FileNotFoundError and not made
    again with images and no record of the run (which a rerun would then refuse)."""
    from PIL import Image

    from clipcond.lab.results import image_path, save_image

    name = image_path("a", "mini", 0, 0)
    (tmp_path / "out").mkdir()
    save_image(Image.new("RGB", (4, 4)), tmp_path / "out", name)
    assert (tmp_path / "out" / name).is_file()
    with pytest.raises(FileNotFoundError, match="the experiment's folder was removed while it ran") as raised:
        save_image(Image.new("RGB", (4, 4)), tmp_path / "gone", name)
    assert raised.value.filename == str(tmp_path / "gone") and not (tmp_path / "gone").exists()
