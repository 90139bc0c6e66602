"""The lab's checks before any work, and what a run leaves in its folder (probe 7's findings).

Each test runs a tiny experiment (CPU, seconds): pipelines from `tiny_pipelines`, saved with
`save_pretrained` and read back by the lab as a user's folder would be.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lab_helpers import save_tiny_clip, write_experiment
from PIL import Image

from clipcond.lab import load_experiment_config, run_experiment
from clipcond.lab.prepare import PrepareStep, check_steps

REPO = Path(__file__).resolve().parent.parent
SUITE = {
    "name": "mini",
    "prompts": [
        {"category": "single", "prompt": "a red circle", "objects": [["red", "circle"]]},
        {"category": "count", "prompt": "two green squares", "objects": [["green", "square"], ["green", "square"]]},
        {"category": "free", "prompt": "a lighthouse at dusk"},
    ],
}


def _cli(argv: list[str]) -> int:
    from clipcond.cli import main

    return main(argv)


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory) -> Path:
    """A diffusers StableDiffusionPipeline folder whose tokenizer is clipcond's own class."""
    import tiny_pipelines

    folder = tmp_path_factory.mktemp("lab_checks") / "sd"
    tiny_pipelines.build_sd().save_pretrained(folder)
    assert json.loads((folder / "model_index.json").read_text())["tokenizer"][0] == "clipcond.tokenization"
    return folder


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("lab_checks_clip"))


def _config(folder: Path, setups: list[dict], **overrides) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    suite = folder / "mini.yaml"
    suite.write_text(yaml.safe_dump(SUITE, sort_keys=False))
    config = {
        "name": "checks",
        "suites": [str(suite)],
        "setups": setups,
        "seeds": [0],
        "steps": 2,
        "metrics": ["judge"],
        "output_dir": str(folder / "out"),
        "batch_size": 2,
    }
    return write_experiment(folder, config, **overrides)


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.int16)


# ---------------------------------------------------------------------------- F5: clipcond's tokenizer


def test_a_native_folder_holding_clipcond_tokenizer_loads_without_help_from_other_imports(tmp_path, sd_folder):
    """diffusers loads a component only from a module already imported, so the lab's native
    path imports `clipcond.tokenization` itself. Run in a fresh process where that module is
    not imported when the run starts (other clipcond modules may import it; the lab must not
    depend on them)."""
    config = _config(tmp_path, [{"name": "sd", "pipeline": str(sd_folder), "native": True}], steps=1)
    script = f"""
import sys
from clipcond.lab import load_experiment_config, run_experiment
import clipcond.pipelines.clip_conditioned, clipcond.pipelines.generate
sys.modules.pop("clipcond.tokenization", None)
run_experiment(load_experiment_config({str(config)!r}), show_progress=False, device="cpu", write_report=False)
"""
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len((tmp_path / "out" / "results.jsonl").read_text().splitlines()) == 3


# ---------------------------------------------------------------------------- F6: what the runner can wrap


def _fake_folder(folder: Path, index: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


PIXART = {
    "_class_name": "PixArtAlphaPipeline",
    "scheduler": ["diffusers", "DDIMScheduler"],
    "text_encoder": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "T5Tokenizer"],
    "transformer": ["diffusers", "PixArtTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


@pytest.mark.parametrize(
    "index, message",
    [
        (PIXART, r"PixArtAlphaPipeline with a `transformer`.*SDXL.*native: true"),
        ({**PIXART, "transformer": None}, r"no UNet2DConditionModel `unet`.*native: true"),
        (
            {**PIXART, "transformer": None, "unet": ["diffusers", "UNet2DConditionModel"]},
            r"`text_encoder` T5EncoderModel, not a CLIP text model",
        ),
        (["not", "an", "object"], r"model_index.json must hold a JSON object.*got list"),
        ("{broken", r"model_index.json cannot be read as JSON"),
    ],
)
def test_check_refuses_what_the_runner_cannot_wrap(tmp_path, index, message) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    text = index if isinstance(index, str) else json.dumps(index)
    (folder / "model_index.json").write_text(text)
    for name, entry in index.items() if isinstance(index, dict) else ():  # each component's folder
        if isinstance(entry, list) and None not in entry:
            (folder / name).mkdir()
    config = _config(tmp_path, [{"name": "px", "pipeline": str(folder)}])
    assert _cli(["experiment", str(config), "--check"]) == 2
    with pytest.raises(ValueError, match=message):
        run_experiment(load_experiment_config(config), show_progress=False)
    assert not (tmp_path / "out").exists()
    if isinstance(index, dict):  # as saved, it passes the check
        native = _config(tmp_path, [{"name": "px", "pipeline": str(folder), "native": True}])
        assert _cli(["experiment", str(native), "--check"]) == 0


def test_an_sdxl_folder_passes_the_check_and_runs_wrapped(tmp_path) -> None:
    """`CLIPConditionedPipeline.from_pipe` wraps SDXL (its recipe "sdxl"), so the lab does."""
    import tiny_pipelines

    folder = tmp_path / "sdxl"
    tiny_pipelines.build_sdxl().save_pretrained(folder)
    config = _config(tmp_path, [{"name": "xl", "pipeline": str(folder)}], steps=1)
    assert _cli(["experiment", str(config), "--check"]) == 0
    output = run_experiment(load_experiment_config(config), show_progress=False, device="cpu", write_report=False)
    assert len((output / "results.jsonl").read_text().splitlines()) == 3


# ---------------------------------------------------------------------------- F7: --device


def test_the_meta_device_is_refused_at_check_in_one_line_before_any_file(tmp_path, sd_folder, capsys) -> None:
    """torch puts a tensor on "meta" (it holds shapes, no data), so the device check passed it
    and the run died drawing the first image."""
    config = _config(tmp_path, [{"name": "sd", "pipeline": str(sd_folder)}])
    capsys.readouterr()
    for extra in (["--check"], ["--no-progress"]):
        assert _cli(["experiment", str(config), "--device", "meta", *extra]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: --device: 'meta' is not a device"), err
    with pytest.raises(ValueError, match="'meta' is not a device that computes"):
        run_experiment(load_experiment_config(config), show_progress=False, device="meta")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("device", ["bogus", "cuda"])
def test_a_device_this_machine_lacks_is_a_one_line_error_before_any_file(tmp_path, sd_folder, device, capsys):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    config = _config(tmp_path, [{"name": "sd", "pipeline": str(sd_folder)}])
    for extra in (["--check"], ["--no-progress"]):
        assert _cli(["experiment", str(config), "--device", device, *extra]) == 2
        assert f"error: --device: '{device}' is not a device" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- F8: batch_size


def test_batch_size_is_not_in_the_key_and_moves_results_only_within_the_documented_bound(
    tmp_path, sd_folder, clip_dir
) -> None:
    """runner.py's docstring: an image drawn in another batch differs by at most 1 grey level
    and its clip_score by up to 2e-5; a resume with another batch_size keeps its results."""
    outputs = []
    for batch_size in (1, 3):
        config = _config(
            tmp_path / f"b{batch_size}",
            [{"name": "sd", "pipeline": str(sd_folder)}],
            seeds=[0, 1],
            batch_size=batch_size,
            metrics=["judge", "clip_score"],
            clip_score_model=str(clip_dir),
        )
        outputs.append(run_experiment(load_experiment_config(config), show_progress=False, write_report=False))
    lines = [
        {line["key"]: line for line in map(json.loads, (o / "results.jsonl").read_text().splitlines())} for o in outputs
    ]
    assert lines[0].keys() == lines[1].keys() and len(lines[0]) == 6
    for key, one in lines[0].items():
        batched = lines[1][key]
        assert np.abs(_pixels(outputs[0] / one["image"]) - _pixels(outputs[1] / batched["image"])).max() <= 1
        assert abs(one["metrics"]["clip_score"] - batched["metrics"]["clip_score"]) <= 2e-5
    resumed = _config(
        tmp_path / "b1",
        [{"name": "sd", "pipeline": str(sd_folder)}],
        seeds=[0, 1],
        batch_size=4,
        metrics=["judge", "clip_score"],
        clip_score_model=str(clip_dir),
    )
    before = (outputs[0] / "results.jsonl").read_text()
    run_experiment(load_experiment_config(resumed), show_progress=False, write_report=False)
    assert (outputs[0] / "results.jsonl").read_text() == before
    runner_doc = (REPO / "clipcond/lab/runner.py").read_text()
    assert "does not depend on `batch_size`" not in runner_doc and "at most 1 grey level" in runner_doc
    assert "results do not depend on it" not in (REPO / "clipcond/lab/config.py").read_text()


# ---------------------------------------------------------------------------- F10: prepare arguments


@pytest.mark.parametrize(
    "command, args, message",
    [
        ("train-diffusion", ["--seed", "1"], r"train-diffusion.*unrecognized arguments: --seed 1"),
        ("train-clip", ["--steps", "many"], r"train-clip.*--steps: invalid int value: 'many'"),
        ("train-clip", ["--set", "colour=red"], r"train-clip.*--set: key `colour`: unknown key"),
        ("train-clip", ["--steps", "0"], r"train-clip.*--steps: TrainClipConfig: `steps`"),
        ("init-clip", ["--model", str(REPO / "configs/models/clip-tiny.yaml")], r"init-clip.*required: -o/--output"),
    ],
)
def test_check_parses_each_prepare_step_with_its_command_parser(tmp_path, sd_folder, command, args, message):
    configs = {"train-clip": "train/clip-tiny-shapes.yaml", "train-diffusion": "diffusion/shapes-tiny.yaml"}
    config_flag = ["--config", str(REPO / "configs" / configs[command])] if command in configs else []
    step = PrepareStep(command=command, creates=str(tmp_path / "made"), args=[*config_flag, *args])
    with pytest.raises(ValueError, match=message):
        check_steps([step])
    setups = [
        {"name": "sd", "pipeline": str(sd_folder)},
        {"name": "made", "pipeline": step.creates, "prepare": [vars(step)]},
    ]
    assert _cli(["experiment", str(_config(tmp_path, setups)), "--check"]) == 2
    good = PrepareStep(command=command, creates=step.creates, args=[*config_flag, "--output-dir", "x"])
    if command == "init-clip":
        good = PrepareStep(command=command, creates=step.creates, args=[*args, "-o", "x", "--seed", "3"])
    check_steps([good])


# ---------------------------------------------------------------------------- F12: small ones


def test_an_empty_metrics_list_says_it_is_empty(tmp_path, sd_folder, capsys) -> None:
    config = _config(tmp_path, [{"name": "sd", "pipeline": str(sd_folder)}], metrics=[])
    assert _cli(["experiment", str(config), "--check"]) == 2
    err = capsys.readouterr().err
    assert "metrics must name at least one metric" in err and "unknown" not in err


def test_a_folder_given_as_the_config_is_named_a_folder(tmp_path, capsys) -> None:
    assert _cli(["experiment", str(tmp_path), "--check"]) == 2
    assert f"error: {tmp_path} is a folder; give the experiment YAML file" in capsys.readouterr().err


def test_steps_zero_is_blamed_on_steps_not_on_set(tmp_path, capsys) -> None:
    config = str(REPO / "configs/train/clip-tiny-shapes.yaml")
    output = str(tmp_path / "run")
    assert _cli(["train-clip", "--config", config, "--steps", "0", "--output-dir", output]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --output-dir/--steps: ") and "--set" not in err
    assert not (tmp_path / "run").exists()


def test_check_and_report_only_together_are_refused_and_write_nothing(tmp_path, sd_folder, capsys) -> None:
    config = _config(tmp_path, [{"name": "sd", "pipeline": str(sd_folder)}], steps=1)
    assert _cli(["experiment", str(config), "--no-progress"]) == 0
    report = tmp_path / "out" / "report.md"
    report.write_text("kept")
    with pytest.raises(SystemExit) as exited:
        _cli(["experiment", str(config), "--check", "--report-only"])
    assert exited.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    assert report.read_text() == "kept"


def test_a_size_the_vae_cannot_take_fails_before_any_generation(tmp_path, sd_folder) -> None:
    folder = tmp_path / "sd"
    shutil.copytree(sd_folder, folder)
    vae_config = folder / "vae" / "config.json"
    vae = json.loads(vae_config.read_text())
    vae["block_out_channels"] = [4, 4, 4, 4]  # diffusers' vae_scale_factor: 8, as SD's
    vae_config.write_text(json.dumps(vae))
    for size, good in (({"height": 36}, False), ({"width": 7}, False), ({"height": 64, "width": 8}, True)):
        config = _config(tmp_path, [{"name": "sd", "pipeline": str(folder)}], **size)
        if good:
            assert _cli(["experiment", str(config), "--check"]) == 0
            continue
        key = next(iter(size))
        with pytest.raises(ValueError, match=rf"{key} must be a positive multiple of 8 .* setup 'sd', got"):
            run_experiment(load_experiment_config(config), show_progress=False)
        assert _cli(["experiment", str(config), "--check"]) == 2 and not (tmp_path / "out").exists()


def test_lowering_seeds_removes_the_images_of_the_dropped_seeds(tmp_path, sd_folder) -> None:
    setups = [{"name": "sd", "pipeline": str(sd_folder)}]
    output = run_experiment(
        load_experiment_config(_config(tmp_path, setups, seeds=[0, 1], steps=1)), show_progress=False
    )
    assert len(list((output / "images").rglob("*-1.png"))) == 3
    run_experiment(load_experiment_config(_config(tmp_path, setups, seeds=[0], steps=1)), show_progress=False)
    assert sorted(p.name for p in (output / "images").rglob("*.png")) == ["0-0.png", "1-0.png", "2-0.png"]
    # a setup renamed: the old one's images go, and so do the folders they were in
    renamed = [{"name": "sd-renamed", "pipeline": str(sd_folder)}]
    run_experiment(load_experiment_config(_config(tmp_path, renamed, seeds=[0], steps=1)), show_progress=False)
    assert [folder.name for folder in (output / "images").iterdir()] == ["sd-renamed"]


def test_the_report_counts_a_repeated_result_line_once(tmp_path, sd_folder) -> None:
    """A results file with a line copied twice (edited by hand, or two runs appending) gives
    the report of the file without the copy, as a run would keep it."""
    from clipcond.lab.report import write_report

    setups = [{"name": "sd", "pipeline": str(sd_folder)}]
    output = run_experiment(load_experiment_config(_config(tmp_path, setups, steps=1)), show_progress=False)
    report = (output / "report.md").read_text()
    results = output / "results.jsonl"
    lines = results.read_text().splitlines()
    results.write_text("\n".join([*lines, lines[0]]) + "\n")
    write_report(output)
    assert (output / "report.md").read_text() == report


def test_an_interrupted_report_leaves_the_old_charts_and_grids_whole(tmp_path, sd_folder, monkeypatch) -> None:
    """A kill while a chart or grid is written leaves the previous file, not half a new one."""
    from matplotlib.figure import Figure

    from clipcond.lab.report import write_report

    config = _config(tmp_path, [{"name": "sd", "pipeline": str(sd_folder)}], steps=1)
    output = run_experiment(load_experiment_config(config), show_progress=False)
    charts = [output / "grids" / "mini.png", output / "plots" / "objects.png"]
    before = [path.read_bytes() for path in charts]

    def torn(target) -> None:
        if isinstance(target, (str, Path)):
            Path(target).write_bytes(b"\x89PNG half")
        else:
            target.write(b"\x89PNG half")
        raise KeyboardInterrupt  # the kill

    for owner, name in ((Image.Image, "save"), (Figure, "savefig")):
        with monkeypatch.context() as patch:
            patch.setattr(owner, name, lambda self, target, *a, **k: torn(target))
            # the cells as if changed: an unchanged chart is not drawn again (test_lab_plots.py)
            patch.setattr("clipcond.lab.plots.chart_key", lambda *a, **k: "a chart of other cells")
            with pytest.raises(KeyboardInterrupt):
                write_report(output)
        assert [path.read_bytes() for path in charts] == before
    assert not [p for p in output.rglob(".*") if p.is_file()]  # no temporary file left


# ---------------------------------------------------------------------------- probe 13: output_dir in a model


@pytest.mark.parametrize("inside", ["pipeline", "clip"])
def test_an_output_dir_inside_a_model_folder_is_refused_naming_both(tmp_path, sd_folder, clip_dir, inside, capsys):
    """The model folder's digest (in every result's key) reads every file under it: a run folder
    inside it changed every key on each run, so every rerun drew every image again."""
    pipeline, clip = tmp_path / "sd", tmp_path / "clip"
    shutil.copytree(sd_folder, pipeline)
    shutil.copytree(clip_dir, clip)
    model = pipeline if inside == "pipeline" else clip
    output = model / "eval"
    setups = [{"name": "sd", "pipeline": str(pipeline)}]
    overrides = {"metrics": ["judge", "clip_score"], "clip_score_model": str(clip)}
    config = _config(tmp_path, setups, output_dir=str(output), **overrides)
    capsys.readouterr()
    for extra in (["--check"], ["--no-progress"]):
        assert _cli(["experiment", str(config), *extra]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert f"output_dir {output} lies inside" in err and f"{model}:" in err, err
    with pytest.raises(ValueError, match="lies inside"):
        run_experiment(load_experiment_config(config), show_progress=False, device="cpu")
    assert not output.exists()
    # a sibling whose name only starts with the model's is outside it
    beside = _config(tmp_path, setups, output_dir=str(tmp_path / f"{model.name}-eval"), **overrides)
    assert _cli(["experiment", str(beside), "--check"]) == 0
