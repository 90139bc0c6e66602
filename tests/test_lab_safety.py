"""The lab never loses finished results to a damaged model or a wrong output_dir: each is
refused in one line before results.jsonl, an image or experiment.json changes."""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lab_safety_models")
    return {
        "a": save_tiny_pipeline(root / "a", 0),
        "b": save_tiny_pipeline(root / "b", 1),
        "clip": save_tiny_clip(root),
    }


@pytest.fixture
def calls(monkeypatch) -> list[int]:
    """Images per CLIPConditionedPipeline call, recorded."""
    return record_pipeline_calls(monkeypatch)


def _config(folder: Path, pipelines: dict[str, Path], clip: Path, **overrides) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mini.yaml").write_text(yaml.safe_dump(SUITE, sort_keys=False))
    config = {
        "name": "safety",
        "suites": [str(folder / "mini.yaml")],
        "setups": [{"name": name, "pipeline": str(path)} for name, path in pipelines.items()],
        "seeds": [0, 1],
        "steps": 2,
        "guidance_scale": 2.0,
        "metrics": ["judge", "clip_score"],
        "clip_score_model": str(clip),
        "output_dir": str(folder / "out"),
        "batch_size": 4,
    }
    return write_experiment(folder, config, **overrides)


def _experiment(config: Path, *options: str) -> int:
    from clipcond.cli import main

    return main(["experiment", str(config), "--no-progress", *options])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and "dropped" not in err and "removed" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    return errors[0]


def _cut_in_half(path: Path) -> bytes:
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    return good


def _torch_zip_weights(component: Path) -> Path:
    """Save `component`'s safetensors weights as the torch zip file (``.bin``) diffusers also reads."""
    import torch
    from safetensors.torch import load_file

    (weights,) = component.glob("*.safetensors")
    target = weights.with_suffix(".bin")
    torch.save(load_file(weights), target)
    weights.unlink()
    return target


def _cut(target: Path):
    good = _cut_in_half(target)
    return lambda: target.write_bytes(good)


def _moved_away(target: Path):
    aside = target.with_name(target.name + "-aside")
    target.rename(aside)
    return lambda: aside.rename(target)


def _vocabulary_moved_away(tokenizer: Path):
    """`tokenizer`'s tokenizer.json, vocab.json and merges.txt moved aside: transformers then
    built a CLIP tokenizer of its two special tokens with no error (`clipcond.file_damage`)."""
    undos = [_moved_away(tokenizer / name) for name in ("tokenizer.json", "vocab.json", "merges.txt")]
    return lambda: [undo() for undo in undos]


def _merges_cut_at_a_line_end(tokenizer: Path):
    """`tokenizer` as the hub's SD 1.5 folder holds it (no tokenizer.json), its merges.txt cut at
    a line's end after 1,000 rules: transformers then built a tokenizer that splits words into
    pieces, with no error (`clipcond.bpe_tables`)."""
    undo_json = _moved_away(tokenizer / "tokenizer.json")
    merges = tokenizer / "merges.txt"
    good = merges.read_bytes()
    merges.write_bytes(b"".join(good.splitlines(keepends=True)[:1001]))
    return lambda: (merges.write_bytes(good), undo_json())


# id -> (the damaged model, the damage (returns its undo), whether the undo leaves other files
# than the first run's: the .bin case converts the weights first, a new digest)
DAMAGES = {
    "unet weights cut": ("a", lambda models: _cut(models["a"] / "unet/diffusion_pytorch_model.safetensors"), False),
    "unet config cut": ("a", lambda models: _cut(models["a"] / "unet/config.json"), False),
    "unet .bin cut": ("a", lambda models: _cut(_torch_zip_weights(models["a"] / "unet")), True),
    "unet folder missing": ("a", lambda models: _moved_away(models["a"] / "unet"), False),
    "unet weights missing": (
        "a",
        lambda models: _moved_away(models["a"] / "unet/diffusion_pytorch_model.safetensors"),
        False,
    ),
    "tokenizer.json cut": ("a", lambda models: _cut(models["a"] / "tokenizer/tokenizer.json"), False),
    "tokenizer vocabulary missing": ("a", lambda models: _vocabulary_moved_away(models["a"] / "tokenizer"), False),
    "merges.txt cut at a line's end": ("a", lambda models: _merges_cut_at_a_line_end(models["a"] / "tokenizer"), False),
    "clip weights cut": (
        "clip",
        lambda models: _cut(next((models["clip"] / "image_encoder").glob("*.safetensors"))),
        False,
    ),
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, models) -> tuple[Path, Path]:
    """One finished experiment (setups a and b, 8 images) on copies of models a and clip, run once
    for the damage cases: (its folder, a pristine copy of it). The experiment's paths are absolute,
    so each case puts the pristine copy back at the same place (mtimes kept) before it damages it."""
    folder = tmp_path_factory.mktemp("lab_safety_finished") / "experiment"
    copies = {name: shutil.copytree(models[name], folder / "models" / name) for name in ("a", "clip")}
    config = _config(folder, {"a": copies["a"], "b": models["b"]}, copies["clip"])
    with pytest.MonkeyPatch.context() as patch:
        calls = record_pipeline_calls(patch)
        assert _experiment(config) == 0
    images = [path for path in (folder / "out").rglob("*.png") if "images" in path.parts]
    assert sum(calls) == 8 and len(images) == 8
    return folder, shutil.copytree(folder, folder.with_name("pristine"))


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_a_damaged_model_fails_in_one_line_before_any_result_or_image_changes(finished, calls, capsys, damage) -> None:
    model, damaged, other_files = damage
    named = {"a": "setup a: pipeline", "clip": "clip_score_model"}[model]
    folder, pristine = finished
    shutil.rmtree(folder)
    shutil.copytree(pristine, folder)
    copies = {name: folder / "models" / name for name in ("a", "clip")}
    config = folder / "experiment.yaml"
    output = folder / "out"
    before = _snapshot(output)
    restore = damaged(copies)
    capsys.readouterr()

    assert _experiment(config, "--check") == 2
    message = _one_error_line(capsys)
    assert named in message and str(copies[model]) in message
    assert _experiment(config) == 1
    message = _one_error_line(capsys)
    assert named in message and str(copies[model]) in message and "re-run" in message
    assert _snapshot(output) == before  # results.jsonl, images, experiment.json and the report: byte for byte

    restore()  # restored (a newer mtime): the finished results still count
    assert _experiment(config) == 0
    if other_files:  # the weights are stored another way: a new digest, so the setup is drawn again
        assert sum(calls) == 4
    else:
        assert calls == []
        assert (output / "results.jsonl").read_bytes() == before["results.jsonl"]


def _linked_pipeline(folder: Path, components: Path) -> Path:
    """A pipeline folder whose model_index.json is its own and whose components link to `components`'."""
    folder.mkdir(parents=True)
    shutil.copy(components / "model_index.json", folder)
    for component in components.iterdir():
        if component.is_dir():
            (folder / component.name).symlink_to(component, target_is_directory=True)
    return folder


def test_the_digest_reads_files_in_symlinked_folders_and_skips_cycles(tmp_path, models) -> None:
    from clipcond.lab.digests import folder_digest

    real = shutil.copytree(models["a"], tmp_path / "real")
    linked = _linked_pipeline(tmp_path / "linked", models["a"])
    assert folder_digest(linked) == folder_digest(real)  # the same files under the same names
    (linked / "unet").unlink()
    (linked / "unet").symlink_to(models["b"] / "unet", target_is_directory=True)
    assert folder_digest(linked) != folder_digest(real)
    (real / "unet" / "loop").symlink_to(real, target_is_directory=True)  # a link to a folder above it
    (real / "self").symlink_to(real / "unet", target_is_directory=True)  # a second name: hashed under both
    digest_with_links = folder_digest(real)
    (real / "unet" / "loop").unlink()
    assert digest_with_links == folder_digest(real)
    (real / "self").unlink()
    assert digest_with_links != folder_digest(real)


def test_repointing_a_symlinked_component_regenerates_its_images(tmp_path, models, calls) -> None:
    pipe = _linked_pipeline(tmp_path / "pipe", models["a"])
    config = _config(tmp_path, {"a": pipe}, models["clip"], metrics=["judge"], clip_score_model=None)
    assert _experiment(config) == 0
    image = tmp_path / "out" / "images" / "a" / "mini" / "0-0.png"
    first = image.read_bytes()
    assert sum(calls) == 4
    (pipe / "unet").unlink()
    (pipe / "unet").symlink_to(models["b"] / "unet", target_is_directory=True)  # other weights
    calls.clear()
    assert _experiment(config) == 0
    assert sum(calls) == 4 and image.read_bytes() != first
    calls.clear()
    assert _experiment(config) == 0
    assert calls == []


def _state(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file and folder under `folder`: its bytes (b"" for a folder) and mtime."""
    return {
        str(path.relative_to(folder)): (path.read_bytes() if path.is_file() else b"", path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
    }


def test_an_output_dir_of_other_files_is_refused_before_any_work(tmp_path, models, calls, capsys) -> None:
    output = tmp_path / "out"
    for name in ("images/photos/cat.png", "plots/loss_curve.png", "grids/contact_sheet.png", "notes.txt"):
        (output / name).parent.mkdir(parents=True, exist_ok=True)
        (output / name).write_bytes(name.encode())
    before = _state(output)
    config = _config(tmp_path, {"a": models["a"]}, models["clip"])
    for options in (["--check"], []):
        assert _experiment(config, *options) == 2
        message = _one_error_line(capsys)
        assert f"output_dir {output} is not empty" in message and "choose an empty or new output_dir" in message
        assert _state(output) == before and calls == []


def test_another_experiments_run_folder_is_refused_and_the_same_experiment_resumes(
    tmp_path, models, calls, capsys
) -> None:
    config = _config(tmp_path / "first", {"a": models["a"]}, models["clip"], output_dir=str(tmp_path / "out"))
    assert _experiment(config) == 0
    output = tmp_path / "out"
    before = _state(output)
    calls.clear()
    other = _config(
        tmp_path / "second", {"b": models["b"]}, models["clip"], name="other", seeds=[5], output_dir=str(output)
    )
    for options in (["--check"], []):
        assert _experiment(other, *options) == 2
        message = _one_error_line(capsys)
        assert f"output_dir {output} holds the run of experiment 'safety', not 'other'" in message
        assert _state(output) == before and calls == []
    # the same experiment with other setups and seeds: its stale results go, as documented
    same = _config(tmp_path / "second", {"b": models["b"]}, models["clip"], seeds=[5], output_dir=str(output))
    assert _experiment(same) == 0
    assert sum(calls) == 2
    assert sorted(path.name for path in (output / "images").rglob("*.png")) == ["0-5.png", "1-5.png"]


def test_run_experiment_refuses_another_experiments_run_folder(tmp_path, models) -> None:
    from clipcond.lab import load_experiment_config, run_experiment

    output = tmp_path / "out"
    output.mkdir()
    (output / "experiment.json").write_text('{"fingerprint": "f", "name": "other"}')
    config = load_experiment_config(_config(tmp_path, {"a": models["a"]}, models["clip"]))
    with pytest.raises(ValueError, match="holds the run of experiment 'other', not 'safety'"):
        run_experiment(config, show_progress=False, write_report=False)
    assert [path.name for path in output.iterdir()] == ["experiment.json"]


def test_a_second_live_run_of_the_folder_is_refused_and_a_dead_runs_lock_is_taken_over(
    tmp_path, models, calls, capsys
) -> None:
    """Two runs at once each drew every pending image and appended its results twice; the
    second now stops in one line before any change. A lock left by a killed run (its process
    gone) does not stop the next run, nor does it make the folder look like someone else's."""
    from clipcond.training.run_lock import RunFolderLock

    config = _config(tmp_path, {"a": models["a"]}, models["clip"])
    output = tmp_path / "out"
    live = RunFolderLock(output)
    live.acquire()  # another run, alive: its flock is held
    try:
        before = _state(output)
        assert _experiment(config) == 1
        message = _one_error_line(capsys)
        assert f"{output} is in use by another run (pid {__import__('os').getpid()}" in message
        assert _state(output) == before and calls == []
    finally:
        live.release()
    dead = {"pid": 999_999_999, "host": __import__("socket").gethostname(), "started": "2026-11-30T00:00:00"}
    (output / "run.lock").write_text(__import__("json").dumps(dead))
    assert _experiment(config) == 0
    lines = (output / "results.jsonl").read_text().splitlines()
    assert sum(calls) == len(lines) == 4 and not (output / "run.lock").exists()


@pytest.mark.parametrize("show_progress", [False, True])
def test_no_progress_hides_the_libraries_loading_bars_and_restores_their_switches(
    tmp_path, models, capfd, show_progress
) -> None:
    """`--no-progress` (show_progress=False) also hides diffusers' "Loading pipeline components"
    and transformers' "Loading weights" bars; their process-wide switches are as before after the
    run. With show_progress=True the bars are drawn (the check below can see them)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from clipcond.lab import load_experiment_config, run_experiment

    config = _config(tmp_path, {"a": models["a"]}, models["clip"], seeds=[0])
    capfd.readouterr()
    run_experiment(load_experiment_config(config), show_progress=show_progress, write_report=False)
    err = capfd.readouterr().err
    assert ("Loading pipeline components" in err) is show_progress
    assert ("Loading weights" in err) is show_progress
    assert diffusers_logging.is_progress_bar_enabled() and transformers_logging.is_progress_bar_enabled()
