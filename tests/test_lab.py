"""The prompt-following lab: suites, metrics against hand computations, an experiment end to
end on tiny pixel-space pipelines, resuming, stale results, batching, and the report."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lab_helpers import record_pipeline_calls, save_tiny_clip, save_tiny_pipeline, write_experiment
from PIL import Image

from clipcond.lab import (
    ExperimentConfig,
    SetupConfig,
    TextPrompt,
    bootstrap_interval,
    clip_score,
    load_clip_scorer,
    load_experiment_config,
    load_suite,
    run_experiment,
    shapes_judge_metrics,
    summarise,
    wilson_interval,
)
from clipcond.lab.grids import GAP, cell_size, header_height, labelled_grid
from clipcond.lab.runner import EXPERIMENT_NAME
from clipcond.pipelines.clip_conditioned import CLIPConditionedPipeline
from clipcond.shapes import render_scene
from clipcond.shapes.prompt_suite import SuitePrompt, scene_from_spec

REPO = Path(__file__).resolve().parent.parent
SUITE = {
    "name": "mini",
    "prompts": [
        {"category": "single", "prompt": "a red circle", "objects": [["red", "circle"]]},
        {
            "category": "relation",
            "prompt": "a blue square to the left of a yellow triangle",
            "objects": [["blue", "square"], ["yellow", "triangle"]],
            "relation": [0, "left of", 1],
        },
        {"category": "count", "prompt": "two green squares", "objects": [["green", "square"], ["green", "square"]]},
        {"category": "free", "prompt": "a lighthouse at dusk"},
    ],
}
LONG_PROMPT = "a plain flat drawing on a bright white background, " * 9 + "a red circle"


# ---------------------------------------------------------------------------- fixtures


def cli_main(argv: list[str]) -> int:
    """`clipcond experiment ...` (the `clipcond` command: a user error is its one-line message)."""
    from clipcond.cli import main

    assert argv[0] == "experiment"
    return main(argv)


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lab_pipelines")
    return {"a": save_tiny_pipeline(root / "a", 0), "b": save_tiny_pipeline(root / "b", 1)}


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("lab_clip"))


def _write_suite(path: Path, suite: dict = SUITE) -> Path:
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def _write_config(folder: Path, pipelines: dict[str, Path], clip_dir: Path | None, **overrides) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    suite = overrides.pop("suite", None) or _write_suite(folder / "mini.yaml")
    config = {
        "name": "mini experiment",
        "suites": [str(suite)],
        "setups": [{"name": name, "pipeline": str(path)} for name, path in pipelines.items()],
        "seeds": [0, 1],
        "steps": 2,
        "guidance_scale": 2.0,
        "metrics": ["judge", "clip_score"],
        "clip_score_model": str(clip_dir) if clip_dir else None,
        "output_dir": str(folder / "out"),
        "batch_size": 3,
    }
    return write_experiment(folder, config, **overrides)


def _results(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "results.jsonl").read_text().splitlines()]


@pytest.fixture
def calls(monkeypatch) -> list[int]:
    """Images per CLIPConditionedPipeline call, recorded."""
    return record_pipeline_calls(monkeypatch)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, pipelines, clip_dir) -> Path:
    """A finished experiment run through the command line: 4 prompts x 2 seeds x 2 setups."""
    config = _write_config(tmp_path_factory.mktemp("lab_run"), pipelines, clip_dir)
    assert cli_main(["experiment", str(config), "--no-progress"]) == 0
    return Path(load_experiment_config(config).output_dir)


# ---------------------------------------------------------------------------- end to end


def test_experiment_writes_results_images_report_plots_and_grids(finished: Path) -> None:
    lines = _results(finished)
    assert len(lines) == 4 * 2 * 2
    assert {(row["setup"], row["index"], row["seed"]) for row in lines} == {
        (s, i, d) for s in "ab" for i in range(4) for d in (0, 1)
    }
    judged = {"objects_found", "objects", "colour", "shape", "count", "exact"}
    for line in lines:
        assert line["suite"] == "mini" and line["prompt"] == SUITE["prompts"][line["index"]]["prompt"]
        assert line["category"] == SUITE["prompts"][line["index"]]["category"]
        assert line["image"] == f"images/{line['setup']}/mini/{line['index']}-{line['seed']}.png"
        assert Image.open(finished / line["image"]).size == (16, 16)
        expected = {"clip_score"} | {0: judged, 1: judged | {"relation"}, 2: judged, 3: set()}[line["index"]]
        assert set(line["metrics"]) == expected, line
        assert -1.0 <= line["metrics"]["clip_score"] <= 1.0 and line["clip_truncated"] is False
    assert {p.name for p in (finished / "plots").glob("*.png")} == {
        f"{m}.png" for m in judged | {"relation", "clip_score"}
    }
    assert (finished / "grids" / "mini.png").is_file()
    report = (finished / "report.md").read_text()
    assert "(complete)" in report and "| category | metric | a | b |" in report
    for cell in summarise(lines):  # every pooled cell is in the report, with its interval and count
        assert f"{cell.mean:.3f} [{cell.low:.3f}, {cell.high:.3f}] ({cell.count})" in report
    exact_a = [c for c in summarise(lines) if (c.setup, c.category, c.metric) == ("a", "(all)", "exact")][0]
    assert exact_a.count == 6  # the three shapes prompts x two seeds; the text prompt is not judged
    record = json.loads((finished / EXPERIMENT_NAME).read_text())
    assert [s["name"] for s in record["setups"]] == ["a", "b"] and len(record["fingerprint"]) == 64


def test_grid_shows_each_setup_and_seed_upscaled_with_nearest(finished: Path) -> None:
    grid = np.asarray(Image.open(finished / "grids" / "mini.png").convert("RGB"))
    size = cell_size([16])
    assert size == 96
    step = size + GAP
    assert grid.shape == (28 + 4 * step, 220 + 4 * step, 3)  # rows: 4 prompts; columns: 2 setups x 2 seeds
    for row, column, setup, seed in ((0, 0, "a", 0), (1, 3, "b", 1), (3, 2, "b", 0)):
        image = Image.open(finished / f"images/{setup}/mini/{row}-{seed}.png").convert("RGB")
        top, left = 28 + row * step, 220 + column * step
        cell = grid[top : top + size, left : left + size]
        np.testing.assert_array_equal(cell, np.asarray(image.resize((size, size), Image.NEAREST)))


def test_grid_wraps_long_column_labels_instead_of_cutting_them() -> None:
    red = Image.new("RGB", (32, 32), (255, 0, 0))
    labels = ["clip-random s0", "clip-random s1"]  # 14 characters: wider than a 96 px column
    header = header_height(labels, 96)
    assert header_height(["a s0", "b s1"], 96) == 28 < header
    grid = np.asarray(labelled_grid([[red, red]], ["p"], labels))
    assert grid.shape == (header + 96 + GAP, 220 + 2 * (96 + GAP), 3)
    np.testing.assert_array_equal(grid[header : header + 96, 220 : 220 + 96], np.asarray(red.resize((96, 96))))
    second_line = grid[24:header, 220 : 220 + 96]  # under a one-line label, above the cells
    assert (second_line < 128).any(), "the label's second line (the seed) is drawn"


def test_result_clip_scores_are_the_cosine_of_the_saved_images(finished: Path, clip_dir: Path) -> None:
    from clipcond.models import load_clip

    lines = [row for row in _results(finished) if row["setup"] == "b"]
    model = load_clip(clip_dir)
    images = [Image.open(finished / row["image"]).convert("RGB") for row in lines]
    expected = _hand_clip_score(model, images, [_ids(row["prompt"]) for row in lines])
    got = torch.tensor([row["metrics"]["clip_score"] for row in lines])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------- resuming and stale results


def test_second_run_generates_nothing_and_a_new_seed_only_its_images(tmp_path, pipelines, clip_dir, calls) -> None:
    config_path = _write_config(tmp_path, {"a": pipelines["a"]}, clip_dir)
    output = run_experiment(load_experiment_config(config_path), show_progress=False)
    assert sum(calls) == 8
    before = (output / "results.jsonl").read_text()
    calls.clear()
    run_experiment(load_experiment_config(config_path), show_progress=False)
    assert calls == [] and (output / "results.jsonl").read_text() == before
    _write_config(tmp_path, {"a": pipelines["a"]}, clip_dir, seeds=[0, 1, 2], suite=tmp_path / "mini.yaml")
    run_experiment(load_experiment_config(config_path), show_progress=False)
    assert sum(calls) == 4
    lines = _results(output)
    assert len(lines) == 12 and sorted({row["seed"] for row in lines}) == [0, 1, 2]
    assert (output / "results.jsonl").read_text().startswith(before)  # the first results were kept as they were


def test_a_torn_last_line_is_dropped_and_redone(tmp_path, pipelines, calls) -> None:
    config_path = _write_config(tmp_path, {"a": pipelines["a"]}, None, metrics=["judge"])
    output = run_experiment(load_experiment_config(config_path), show_progress=False, write_report=False)
    text = (output / "results.jsonl").read_text()
    (output / "results.jsonl").write_text(text[: len(text) - 20])  # a run killed while writing its last line
    calls.clear()
    run_experiment(load_experiment_config(config_path), show_progress=False, write_report=False)
    assert sum(calls) == 1
    assert (output / "results.jsonl").read_text() == text


def test_changed_settings_suite_or_weights_never_mix_stale_results(tmp_path, pipelines, clip_dir, calls) -> None:
    weights_a = tmp_path / "a"
    shutil.copytree(pipelines["a"], weights_a)
    setups = {"a": weights_a, "b": pipelines["b"]}
    config_path = _write_config(tmp_path, setups, None, metrics=["judge"])
    output = run_experiment(load_experiment_config(config_path), show_progress=False, write_report=False)
    first = {(row["setup"], row["index"], row["seed"]): row for row in _results(output)}

    # one setup's steps change: only its images are drawn again
    calls.clear()
    config = yaml.safe_load(config_path.read_text())
    config["setups"][1]["steps"] = 3
    config_path.write_text(yaml.safe_dump(config))
    run_experiment(load_experiment_config(config_path), show_progress=False, write_report=False)
    assert sum(calls) == 8
    lines = _results(output)
    assert len(lines) == 16
    assert all(row == first[(row["setup"], row["index"], row["seed"])] for row in lines if row["setup"] == "a")
    assert all(
        row["key"] != first[(row["setup"], row["index"], row["seed"])]["key"] for row in lines if row["setup"] == "b"
    )

    # one suite entry changes: only that entry is drawn again, and its old prompt is gone
    calls.clear()
    suite = json.loads(json.dumps(SUITE))
    suite["prompts"][0] = {"category": "single", "prompt": "a blue circle", "objects": [["blue", "circle"]]}
    _write_suite(tmp_path / "mini.yaml", suite)
    run_experiment(load_experiment_config(config_path), show_progress=False, write_report=False)
    assert sum(calls) == 2 * 2
    lines = _results(output)
    assert len(lines) == 16 and "a red circle" not in {row["prompt"] for row in lines}

    # the weights of a pipeline change: its images are drawn again
    calls.clear()
    pipe = CLIPConditionedPipeline.from_pretrained(weights_a)
    with torch.no_grad():
        pipe.unet.conv_out.bias.add_(0.5)
    pipe.save_pretrained(weights_a)
    run_experiment(load_experiment_config(config_path), show_progress=False, write_report=False)
    assert sum(calls) == 8 and len(_results(output)) == 16


def test_images_do_not_depend_on_batch_size(tmp_path, pipelines) -> None:
    suite = json.loads(json.dumps(SUITE))
    suite["prompts"].append({"category": "long", "prompt": LONG_PROMPT, "objects": [["red", "circle"]]})
    suite_path = _write_suite(tmp_path / "mini.yaml", suite)
    outputs = []
    for batch_size in (1, 10):
        config = _write_config(
            tmp_path / f"b{batch_size}",
            {"a": pipelines["a"]},
            None,
            metrics=["judge"],
            batch_size=batch_size,
            suite=suite_path,
        )
        outputs.append(run_experiment(load_experiment_config(config), show_progress=False, write_report=False))
    for line in _results(outputs[0]):
        one, batched = (np.asarray(Image.open(output / line["image"]), dtype=np.int16) for output in outputs)
        assert np.abs(one - batched).max() <= 1, line["prompt"]  # equal up to float rounding of batched kernels


def test_a_diffusers_sd_pipeline_runs_wrapped_and_native(tmp_path, clip_dir) -> None:
    """A setup that is not a shapes model still works; wrapped in clipcond's conditioner, an SD
    pipeline draws the images its own encode_prompt draws (prompts under 77 tokens)."""
    import tiny_pipelines

    folder = tmp_path / "sd"
    tiny_pipelines.build_sd().save_pretrained(folder)
    config = _write_config(
        tmp_path,
        {},
        clip_dir,
        seeds=[0],
        setups=[
            {"name": "wrapped", "pipeline": str(folder)},
            {"name": "native", "pipeline": str(folder), "native": True},
        ],
    )
    output = run_experiment(load_experiment_config(config), show_progress=False)
    lines = _results(output)
    assert len(lines) == 8
    for index in range(4):
        wrapped, native = (
            np.asarray(Image.open(output / f"images/{s}/mini/{index}-0.png"), dtype=np.int16)
            for s in ("wrapped", "native")
        )
        assert wrapped.shape == (32, 32, 3) and np.abs(wrapped - native).max() <= 1


# ---------------------------------------------------------------------------- checks before any work


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        (dict(metrics=["judge", "fid"]), ValueError, r"unknown metric.*fid.*known metrics: \['clip_score', 'judge'\]"),
        (dict(clip_score_model=None), ValueError, "clip_score needs `clip_score_model`"),
        (dict(colour="red"), ValueError, r"key `colour`: unknown key for ExperimentConfig"),
        (dict(seeds=[1, 1]), ValueError, "seeds must differ"),
        (
            dict(setups=[{"name": "x", "pipeline": "nowhere/at/all"}]),
            FileNotFoundError,
            "setup 'x': pipeline folder nowhere/at/all does not exist",
        ),
        (
            dict(clip_score_model="nowhere/clip"),
            FileNotFoundError,
            "clip_score_model nowhere/clip is not a CLIP folder",
        ),
        (dict(setups=[{"name": "a/b", "pipeline": "x"}]), ValueError, "not a folder name"),
    ],
)
def test_bad_experiments_fail_before_any_generation(
    tmp_path, pipelines, clip_dir, calls, overrides, error, message
) -> None:
    config = _write_config(tmp_path, pipelines, clip_dir, **overrides)
    with pytest.raises(error, match=message) as raised:
        run_experiment(load_experiment_config(config), show_progress=False)
    if "key `" in message:
        assert str(config) in str(raised.value)
    assert calls == [] and not (tmp_path / "out").exists()
    assert cli_main(["experiment", str(config), "--no-progress"]) == 2


def test_malformed_suite_fails_before_any_generation(tmp_path, pipelines, calls) -> None:
    suite = json.loads(json.dumps(SUITE))
    suite["prompts"][2]["objects"][1] = ["green", "hexagon"]
    path = _write_suite(tmp_path / "broken.yaml", suite)
    config = _write_config(tmp_path, pipelines, None, metrics=["judge"], suite=path)
    with pytest.raises(ValueError, match=r"broken\.yaml: prompts\[2\]: key `objects\[1\]`: unknown shape 'hexagon'"):
        run_experiment(load_experiment_config(config), show_progress=False)
    assert calls == [] and not (tmp_path / "out").exists()


def test_a_suite_with_a_key_given_twice_is_refused_naming_the_file_and_line(tmp_path) -> None:
    """YAML's safe loader keeps the last of two equal keys silently: a suite whose `prompts`
    come twice would lose the first list."""
    from clipcond.lab.suites import load_suite

    path = tmp_path / "twice.yaml"
    path.write_text("name: twice\nprompts: []\nprompts: []\n")
    with pytest.raises(ValueError, match=f"^{path}: line 3: the key 'prompts' is given twice$"):
        load_suite(path)


def test_a_missing_matplotlib_fails_before_any_generation(tmp_path, pipelines, calls, monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    config = _write_config(tmp_path, pipelines, None, metrics=["judge"])
    with pytest.raises(ImportError, match="pip install matplotlib"):
        run_experiment(load_experiment_config(config), show_progress=False)
    assert calls == []
    run_experiment(load_experiment_config(config), show_progress=False, write_report=False)  # results without a report
    assert sum(calls) == 16


def test_a_float16_pipeline_runs_in_float32_on_the_cpu(tmp_path, pipelines, monkeypatch) -> None:
    """A pipeline stored in float16 (as the bundled model is) samples in float32 on a CPU, and
    draws what its float32 original draws, up to the weights' float16 rounding."""
    half = tmp_path / "half"
    CLIPConditionedPipeline.from_pretrained(pipelines["a"]).to(torch.float16).save_pretrained(half)
    dtypes = []
    original = CLIPConditionedPipeline.__call__

    def recording(self, *args, **kwargs):
        dtypes.append((self.unet.dtype, self.text_encoder.dtype))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CLIPConditionedPipeline, "__call__", recording)
    config = _write_config(tmp_path, {"full": pipelines["a"], "half": half}, None, metrics=["judge"], seeds=[0])
    output = run_experiment(load_experiment_config(config), show_progress=False, device="cpu", write_report=False)
    assert dtypes and set(dtypes) == {(torch.float32, torch.float32)}
    for index in range(len(SUITE["prompts"])):
        full, halved = (
            np.asarray(Image.open(output / f"images/{s}/mini/{index}-0.png"), dtype=np.int16) for s in ("full", "half")
        )
        assert np.abs(full - halved).mean() <= 2.0


def test_a_pipeline_with_a_t5_second_encoder_needs_native(tmp_path, pipelines) -> None:
    """SDXL's second CLIP wraps (tests/test_lab_checks.py); a T5 beside a UNet does not."""
    folder = tmp_path / "t5"
    shutil.copytree(pipelines["a"], folder)
    index = json.loads((folder / "model_index.json").read_text())
    index.update(_class_name="SomeT5Pipeline", text_encoder_2=["transformers", "T5EncoderModel"])
    (folder / "model_index.json").write_text(json.dumps(index))
    config = _write_config(tmp_path, {"xl": folder}, None, metrics=["judge"])
    with pytest.raises(ValueError, match="setup 'xl'.*SomeT5Pipeline.*T5EncoderModel.*native: true"):
        run_experiment(load_experiment_config(config), show_progress=False)


def test_relative_paths_resolve_from_the_working_directory_then_the_config_folder(
    tmp_path, pipelines, monkeypatch
) -> None:
    folder = tmp_path / "configs"
    _write_suite(tmp_path / "mini.yaml")
    shutil.copytree(pipelines["a"], folder / "pipes" / "a")
    path = _write_config(
        folder, {"a": Path("pipes/a")}, None, metrics=["judge"], suite="../mini.yaml", output_dir="out"
    )
    monkeypatch.chdir(tmp_path)
    config = load_experiment_config(path)
    assert config.setups[0].pipeline == str(folder / "pipes" / "a")  # not in the working directory
    assert config.suites == [str(folder / "../mini.yaml")]
    assert config.output_dir == "out"
    (tmp_path / "pipes").mkdir()
    shutil.copytree(pipelines["b"], tmp_path / "pipes" / "a")
    assert load_experiment_config(path).setups[0].pipeline == "pipes/a"  # the working directory comes first


# ---------------------------------------------------------------------------- suites


def _entries_with(**change) -> dict:
    entry = {"category": "single", "prompt": "a red circle", "objects": [["red", "circle"]]}
    entry.update(change)
    return {"prompts": [{"category": "ok", "prompt": "a blue square", "objects": [["blue", "square"]]}, entry]}


@pytest.mark.parametrize(
    "entry, message",
    [
        (_entries_with(objects=[["pink", "circle"]]), r"prompts\[1\]: key `objects\[0\]`: unknown colour 'pink'"),
        (_entries_with(objects=[["red", "star"]]), r"prompts\[1\]: key `objects\[0\]`: unknown shape 'star'"),
        (_entries_with(objects=[["red"]]), r"prompts\[1\]: key `objects\[0\]`: expected \[colour, shape\]"),
        (_entries_with(prompt=""), r"prompts\[1\]: key `prompt`: must be a non-empty string"),
        (_entries_with(category="(all)"), r"prompts\[1\]: key `category`: '\(all\)' is the report's name"),
        (_entries_with(colour="red"), r"key `prompts\[1\]\.colour`: unknown key"),
        (_entries_with(relation=[0, "near", 1]), r"prompts\[1\]: key `relation`: expected \[i, relation, j\]"),
        (
            _entries_with(
                objects=[["red", "circle"], ["blue", "square"]],
                prompt="a red circle left of a blue square",
                relation=[0, "left of", 5],
            ),
            r"prompts\[1\]: key `relation`: i and j must be two different object indices in \[0, 2\)",
        ),
        (
            _entries_with(
                objects=[["red", "circle"], ["red", "circle"]],
                prompt="a red circle above a red circle",
                relation=[0, "above", 1],
            ),
            r"prompts\[1\]: key `relation`: objects\[0\] \(red circle\) is not the only one",
        ),
        (_entries_with(objects=None, relation=[0, "left of", 1]), r"prompts\[1\]: key `relation`: needs `objects`"),
        (
            _entries_with(prompt="a blue circle"),
            r"prompts\[1\]: key `objects\[0\]`: the prompt 'a blue circle' does not name 'red'",
        ),
        ({"prompts": [{"prompt": "a red circle"}]}, r"key `prompts\[0\]\.category`: required key is missing"),
        ({"prompts": []}, "the suite holds no prompt"),
    ],
)
def test_suite_errors_name_the_file_the_entry_and_the_key(tmp_path, entry, message) -> None:
    path = _write_suite(tmp_path / "bad-suite.yaml", entry)
    with pytest.raises(ValueError, match=message) as raised:
        load_suite(path)
    assert str(path) in str(raised.value)


def test_suite_entries_become_suite_prompts_or_text_prompts(tmp_path) -> None:
    suite = load_suite(_write_suite(tmp_path / "mini.yaml"))
    assert suite.name == "mini" and len(suite.prompts) == 4
    assert suite.prompts[1] == SuitePrompt(
        "relation",
        SUITE["prompts"][1]["prompt"],
        scene_from_spec([("blue", "square"), ("yellow", "triangle")], (0, "left of", 1)),
    )
    assert suite.prompts[3] == TextPrompt("free", "a lighthouse at dusk") and suite.prompts[3].scene is None


def test_shipped_suites_load_and_match_their_generator() -> None:
    from clipcond import clip_tokenizer
    from clipcond.shapes import COLOURS, train_pairs

    spec = importlib.util.spec_from_file_location("make_suites", REPO / "benchmarks" / "make_suites.py")
    make_suites = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_suites)
    assert make_suites.main(["--check"]) == 0  # the files are what the generator writes
    suites = {path.stem: load_suite(path) for path in sorted((REPO / "configs" / "suites").glob("*.yaml"))}
    assert set(suites) == {"single", "binding", "spatial", "counting", "long", "paraphrase"}
    seen = set(train_pairs())
    for suite in suites.values():
        assert 12 <= len(suite.prompts) <= 48, suite.name
        assert all(o.pair in seen for entry in suite.prompts for o in entry.scene.objects), suite.name
    assert {entry.scene.objects[0].pair for entry in suites["single"].prompts} == seen
    binding = suites["binding"].prompts
    for first, swapped in zip(binding[::2], binding[1::2]):  # each pair is followed by its colour swap
        (a, b), (c, d) = (o.pair for o in first.scene.objects), (o.pair for o in swapped.scene.objects)
        assert (c, d) == ((b[0], a[1]), (a[0], b[1]))
    assert {entry.scene.relation[1] for entry in suites["spatial"].prompts} == {"left of", "right of", "above", "below"}
    assert {len(entry.scene.objects) for entry in suites["counting"].prompts} == {2, 3}
    tokenizer = clip_tokenizer()
    for entry in suites["long"].prompts:
        first_colour = min(entry.prompt.index(f" {c} ") for c in COLOURS if f" {c} " in entry.prompt)
        assert len(tokenizer(entry.prompt)["input_ids"]) > 77
        assert len(tokenizer(entry.prompt[:first_colour])["input_ids"]) > 77  # the objects come after the window
    example = load_experiment_config(REPO / "configs" / "experiments" / "example-bundled.yaml")
    assert [Path(p).stem for p in example.suites] == ["single", "binding", "spatial", "counting", "long", "paraphrase"]


# ---------------------------------------------------------------------------- metrics


def test_judge_metrics_are_all_correct_on_rendered_suite_scenes() -> None:
    entries = [
        entry for path in sorted((REPO / "configs" / "suites").glob("*.yaml")) for entry in load_suite(path).prompts
    ]
    for entry in entries[::3]:
        values = shapes_judge_metrics(render_scene(entry.scene, 32), entry.scene)
        assert values.pop("objects_found") == 1.0 and all(v is True for v in values.values()), entry.prompt
        assert ("relation" in values) == (entry.scene.relation is not None)


def test_judge_metrics_on_wrong_images() -> None:
    asked = scene_from_spec([("red", "circle"), ("blue", "square")], (0, "left of", 1))
    swapped_colours = scene_from_spec([("blue", "circle"), ("red", "square")], (0, "left of", 1))
    values = shapes_judge_metrics(render_scene(swapped_colours, 32), asked)
    assert values == {
        "objects_found": 0.0,
        "objects": False,
        "colour": True,
        "shape": True,
        "count": False,
        "relation": False,
        "exact": False,
    }
    flipped = scene_from_spec([("red", "circle"), ("blue", "square")], (0, "right of", 1))
    values = shapes_judge_metrics(render_scene(flipped, 32), asked)
    assert values["objects"] and values["count"] and not values["relation"] and not values["exact"]
    blank = shapes_judge_metrics(Image.new("RGB", (32, 32), (255, 255, 255)), asked)
    assert blank["objects_found"] == 0.0 and not any(v for k, v in blank.items() if k != "objects_found")


def _hand_clip_score(model, images: list[Image.Image], token_rows: list[list[int]]) -> torch.Tensor:
    """Training's preprocessing, encode_image / encode_text (one prompt at a time: no padding), cosine."""
    from clipcond.training.data import ClipImageTransform

    transform = ClipImageTransform(model.config.vision.image_size)
    with torch.no_grad():
        image = model.encode_image(torch.stack([transform(i) for i in images]))
        texts = torch.cat([model.encode_text(torch.tensor([row])) for row in token_rows])
    return torch.nn.functional.cosine_similarity(image, texts, dim=-1)


def _ids(prompt: str) -> list[int]:
    from clipcond import clip_tokenizer

    return clip_tokenizer()(prompt)["input_ids"]


def test_clip_score_is_the_cosine_of_encode_image_and_encode_text(clip_dir) -> None:
    from clipcond.models import load_clip

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (s, s, 3), dtype=np.uint8)) for s in (16, 32, 64)]
    prompts = ["a red circle", "two blue squares to the left of a green triangle", "a lighthouse"]
    model = load_clip(clip_dir)
    expected = _hand_clip_score(model, images, [_ids(p) for p in prompts])
    torch.testing.assert_close(clip_score(images, prompts, model), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(clip_score(images, prompts, load_clip_scorer(clip_dir)), expected, atol=1e-5, rtol=0)
    with pytest.warns(UserWarning, match="1 prompt.*truncated"):
        long = clip_score(images[:1], [LONG_PROMPT], model)
    kept = _ids(LONG_PROMPT)[:76] + [49407]  # BOS and the first 75 tokens, then EOS
    assert len(_ids(LONG_PROMPT)) > 77
    torch.testing.assert_close(long, _hand_clip_score(model, images[:1], [kept]), atol=1e-5, rtol=0)


def test_clip_score_of_a_transformers_clip_model_equals_its_two_tower_twin(tmp_path) -> None:
    from clipcond.models import ClipTwoTower, build_clip_model, load_model_config

    torch.manual_seed(0)
    hf_model = build_clip_model(load_model_config(REPO / "configs/models/clip-tiny-vit.yaml")).eval()
    twin = ClipTwoTower.from_clip_model(hf_model).eval()
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(2)]
    prompts = ["a red circle", "a blue square"]
    torch.testing.assert_close(
        clip_score(images, prompts, hf_model), clip_score(images, prompts, twin), atol=1e-6, rtol=0
    )
    hf_model.save_pretrained(tmp_path / "hf")
    torch.testing.assert_close(
        clip_score(images, prompts, load_clip_scorer(tmp_path / "hf")),
        clip_score(images, prompts, twin),
        atol=1e-6,
        rtol=0,
    )


# ---------------------------------------------------------------------------- intervals


def test_wilson_interval_matches_the_formula_and_scipy() -> None:
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    low, high = wilson_interval(8, 10)
    z = 1.959963984540054
    centre, half = (0.8 + z * z / 20) / (1 + z * z / 10), z * math.sqrt(0.016 + z * z / 400) / (1 + z * z / 10)
    assert abs(low - (centre - half)) < 1e-12 and abs(high - (centre + half)) < 1e-12
    stats = pytest.importorskip("scipy.stats")
    for k, n in ((3, 7), (0, 5), (41, 50)):
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert abs(wilson_interval(k, n)[0] - ci.low) < 1e-9 and abs(wilson_interval(k, n)[1] - ci.high) < 1e-9


def test_bootstrap_interval_of_a_mean_is_near_the_normal_interval() -> None:
    values = np.random.default_rng(0).normal(0.3, 0.1, size=400)
    low, high = bootstrap_interval(values)
    half = 1.96 * values.std() / math.sqrt(values.size)
    assert abs(low - (values.mean() - half)) < 0.002 and abs(high - (values.mean() + half)) < 0.002
    assert bootstrap_interval(values) == (low, high)  # a fixed seed: reports are reproducible
    assert bootstrap_interval([0.25]) == (0.25, 0.25)


def test_bootstrap_interval_depends_on_the_values_not_their_order() -> None:
    """A resumed run appends its redrawn images' values at the end: the interval must not move."""
    values = np.random.default_rng(1).normal(0.3, 0.1, size=50)
    shuffled = np.random.default_rng(2).permutation(values)
    assert bootstrap_interval(shuffled) == bootstrap_interval(values)
    assert bootstrap_interval(values[::-1]) == bootstrap_interval(values)


def test_config_values_are_checked_when_built() -> None:
    setup = SetupConfig(name="a", pipeline="p")
    base = dict(name="x", suites=["s.yaml"], setups=[setup], seeds=[0], output_dir="o")
    assert ExperimentConfig(**base).metrics == ["judge"]
    with pytest.raises(ValueError, match="setup names must differ"):
        ExperimentConfig(**{**base, "setups": [setup, setup]})
    with pytest.raises(ValueError, match="steps and batch_size must be >= 1"):
        ExperimentConfig(**base, batch_size=0)


# ---------------------------------------------------------------------------- prepare steps


def test_prepare_steps_make_missing_models_once_then_the_experiment_runs(tmp_path, monkeypatch) -> None:
    import subprocess

    from clipcond.lab.prepare import PrepareStep, unique_steps

    clip = tmp_path / "models" / "clip-random"
    run = tmp_path / "models" / "unet"
    diffusion = _tiny_diffusion_config(tmp_path / "diffusion.yaml")
    steps = [
        {
            "command": "init-clip",
            "args": ["--model", str(REPO / "configs/models/clip-tiny.yaml"), "-o", str(clip)],
            "creates": str(clip),
        },
        {
            "command": "train-diffusion",
            "args": [
                "--config",
                str(diffusion),
                "--set",
                f"text_encoder={clip}",
                "--output-dir",
                str(run),
                "--no-progress",
            ],
            "creates": str(run / "pipeline"),
        },
    ]
    config = _write_config(  # the CLIP-score model too is made by a prepare step
        tmp_path / "exp",
        {},
        clip,
        seeds=[0],
        setups=[
            {"name": "random", "pipeline": str(run / "pipeline"), "prepare": steps},
            {"name": "random-again", "pipeline": str(run / "pipeline"), "prepare": steps[:1] + steps[1:]},
        ],
    )
    assert cli_main(["experiment", str(config), "--check"]) == 0  # plans, makes nothing
    assert not clip.exists()
    launched = []
    original = subprocess.Popen

    def counting(command, *args, **kwargs):
        if isinstance(command, list) and command[1:3] == [
            "-m",
            "clipcond.cli",
        ]:  # our prepare steps, not a library's calls
            launched.append(command[3])
        return original(command, *args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", counting)
    assert cli_main(["experiment", str(config), "--no-progress"]) == 0
    assert launched == ["init-clip", "train-diffusion"]  # shared steps run once
    assert (run / "pipeline" / "model_index.json").is_file()
    results = _results(tmp_path / "exp" / "out")
    assert len(results) == 2 * len(SUITE["prompts"]) and all(
        -1.0 <= line["metrics"]["clip_score"] <= 1.0 for line in results
    )
    launched.clear()
    assert cli_main(["experiment", str(config), "--no-progress"]) == 0
    assert launched == []  # everything exists: nothing trains again
    with pytest.raises(ValueError, match="two different prepare steps"):
        unique_steps([[PrepareStep(**steps[0])], [PrepareStep(**{**steps[0], "args": ["--model", "other.yaml"]})]])


def _tiny_diffusion_config(path: Path) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "text_encoder": "PLACEHOLDER",
                "unet": {
                    "block_out_channels": [8, 16],
                    "layers_per_block": 1,
                    "norm_num_groups": 4,
                    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
                    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
                },
                "image_size": 16,
                "batch_size": 2,
                "steps": 2,
                "warmup_steps": 1,
                "output_dir": "PLACEHOLDER",
            }
        )
    )
    return path


def test_a_step_needs_the_earlier_steps_whose_path_it_names_in_its_args_or_config(tmp_path) -> None:
    from clipcond.lab.prepare import PrepareStep, step_dependencies

    model = str(REPO / "configs/models/clip-tiny.yaml")
    clip, clip_large = tmp_path / "clip", tmp_path / "clip-large"
    in_config = tmp_path / "diffusion-b.yaml"
    in_config.write_text(f"text_encoder: {clip_large}/model\n")
    steps = [
        PrepareStep("init-clip", str(clip / "model"), ["--model", model, "-o", str(clip / "model")]),
        PrepareStep("init-clip", str(clip_large / "model"), ["--model", model, "-o", str(clip_large / "model")]),
        PrepareStep(
            "train-diffusion", str(tmp_path / "a"), ["--config", str(in_config), "--set", f"text_encoder={clip}/model"]
        ),
        PrepareStep(
            "train-diffusion", str(tmp_path / "b"), ["--config", str(in_config)]
        ),  # names it only in its config
        PrepareStep("init-clip", str(tmp_path / "c"), ["--model", model, "-o", str(tmp_path / "c")]),
    ]
    assert step_dependencies(steps) == [set(), set(), {0, 1}, {1}, set()]  # clip is not a part of clip-large


def test_independent_prepare_steps_run_side_by_side_and_dependent_ones_wait(tmp_path, monkeypatch) -> None:
    """The scheduling of `run_steps`, with each command's process replaced by a stand-in that
    lasts a second and makes the step's `creates` path (the real commands run in
    test_prepare_steps_make_missing_models_once_then_the_experiment_runs)."""
    import os
    import subprocess
    import sys

    from clipcond.lab.prepare import PrepareStep, run_steps

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    model = str(REPO / "configs/models/clip-tiny.yaml")
    first, second, unet = tmp_path / "first", tmp_path / "second", tmp_path / "unet"
    steps = [
        PrepareStep("init-clip", str(first), ["--model", model, "-o", str(first)]),
        PrepareStep("init-clip", str(second), ["--model", model, "--seed", "1", "-o", str(second)]),
        PrepareStep(
            "train-diffusion",
            str(unet / "pipeline"),
            [
                "--config",
                str(_tiny_diffusion_config(tmp_path / "d.yaml")),
                "--set",
                f"text_encoder={first}",
                "--output-dir",
                str(unet),
            ],
        ),
    ]
    # (creates path of the step, {path: not yet reaped by the scheduler} of the steps launched before it, env):
    # `returncode` is set only once the scheduler's poll has seen the process end, so this is its own view
    launches = []
    processes = {}
    original = subprocess.Popen

    def stand_in(command, *args, **kwargs):
        assert command[1:4] == ["-m", "clipcond.cli", command[3]] and command[3] in ("init-clip", "train-diffusion")
        creates = command[command.index("-o") + 1] if "-o" in command else str(unet / "pipeline")
        launches.append(
            (creates, {path: process.returncode is None for path, process in processes.items()}, kwargs.get("env"))
        )
        make = f"import pathlib, time; time.sleep(1); pathlib.Path({creates!r}).mkdir(parents=True)"
        processes[creates] = original([sys.executable, "-c", make], *args, **kwargs)
        return processes[creates]

    monkeypatch.setattr(subprocess, "Popen", stand_in)
    run_steps(steps, jobs=2, log_dir=tmp_path / "logs")
    assert [creates for creates, _, _ in launches] == [str(first), str(second), str(unet / "pipeline")]
    assert launches[1][1] == {str(first): True}  # the second started while the first ran
    assert launches[2][1][str(first)] is False  # the UNet waited for its text encoder
    cores = os.cpu_count() or 1
    assert [env["OMP_NUM_THREADS"] for _, _, env in launches[:2]] == [str(max(1, cores // 2))] * 2  # two ready: shared
    beside = launches[2][1][str(second)]  # the UNet starts alone (all cores) or beside the second
    assert launches[2][2]["OMP_NUM_THREADS"] == str(max(1, cores // (2 if beside else 1)))
    assert (unet / "pipeline").is_dir() and second.is_dir()
    assert sorted(path.name for path in (tmp_path / "logs").iterdir()) == [
        "1-init-clip.log",
        "2-init-clip.log",
        "3-train-diffusion.log",
    ]
    launches.clear()
    run_steps(steps, jobs=2, log_dir=tmp_path / "logs")
    assert launches == []  # all made: nothing runs again


def test_a_failing_side_by_side_step_stops_the_others_and_shows_its_log(tmp_path) -> None:
    from clipcond.lab.prepare import PrepareStep, run_steps

    bad = tmp_path / "bad.yaml"  # valid when checked; its data file is missing when the step runs
    model = REPO / "configs/models/clip-tiny.yaml"
    bad.write_text(f"model: {model}\ndata: {{source: manifest, manifest: {tmp_path / 'no_such_manifest.jsonl'}}}\n")
    steps = [
        PrepareStep("train-clip", str(tmp_path / "never"), ["--config", str(bad)]),
        PrepareStep(
            "init-clip",
            str(tmp_path / "clip"),
            ["--model", str(REPO / "configs/models/clip-tiny.yaml"), "-o", str(tmp_path / "clip")],
        ),
    ]
    with pytest.raises(
        RuntimeError,
        match=r"(?s)clipcond train-clip. failed with status 2; its log .*1-train-clip.log ends:.*no_such_manifest",
    ):
        run_steps(steps, jobs=2, log_dir=tmp_path / "logs")
    for jobs, log_dir, message in [
        (0, tmp_path, "jobs must be an integer >= 1"),
        (True, tmp_path, "jobs must be"),
        (2, None, "needs a log_dir"),
    ]:
        with pytest.raises(ValueError, match=message):
            run_steps(steps, jobs=jobs, log_dir=log_dir)
    with pytest.raises(SystemExit):
        cli_main(["experiment", str(bad), "--jobs", "0"])


def test_a_prepare_step_naming_a_missing_config_fails_before_anything_runs(tmp_path, pipelines) -> None:
    step = {
        "command": "train-clip",
        "args": ["--config", str(tmp_path / "missing.yaml")],
        "creates": str(tmp_path / "m"),
    }
    config = _write_config(
        tmp_path,
        {},
        None,
        metrics=["judge"],
        setups=[{"name": "a", "pipeline": str(pipelines["a"]), "prepare": [step]}],
    )
    assert cli_main(["experiment", str(config), "--no-progress"]) == 2
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match=r"setups\[0\]\.prepare\[0\]\.command.*got .rm."):
        load_experiment_config(
            _write_config(
                tmp_path / "b",
                {},
                None,
                metrics=["judge"],
                setups=[{"name": "a", "pipeline": str(pipelines["a"]), "prepare": [{**step, "command": "rm"}]}],
            )
        )


def test_a_results_line_that_cannot_be_read_costs_that_line_only(tmp_path) -> None:
    """A byte that is not UTF-8, JSON nested past the recursion limit, a torn line and a JSON
    value that is no result are each one unreadable line; the good lines around them stay."""
    from clipcond.lab.results import read_results

    good = {"key": "k1", "setup": "a", "suite": "s", "index": 0, "category": "c", "prompt": "p", "seed": 0}
    good = {**good, "image": "images/a/s/0-0.png", "metrics": {"objects_found": 1.0}}
    path = tmp_path / "results.jsonl"
    path.write_bytes(
        json.dumps(good).encode()
        + b"\n\xff\n"
        + b"[" * 100_000
        + b"\n"
        + b'{"key": "k2", "metr\n'
        + b"[1, 2]\n\n"
        + json.dumps({**good, "key": "k3"}).encode()
        + b"\n"
    )
    lines, unreadable = read_results(path)
    assert [line["key"] for line in lines] == ["k1", "k3"] and unreadable == 4
