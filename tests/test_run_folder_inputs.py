"""What a run folder is made of besides the config: a name (an empty `output_dir` is refused by
every training command), and the frozen models a run reads (`text_encoder`, `t5_encoder`, `vae`,
`init_from`), whose files' fingerprints a resume compares."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from clipcond.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY_CLIP_MODEL = str(REPO / "configs" / "models" / "clip-tiny.yaml")

# the smallest valid config of each training command, but for output_dir
MINIMAL_CONFIGS = {
    "train-clip": {"model": TINY_CLIP_MODEL, "batch_size": 8, "steps": 3},
    "train-diffusion": {"text_encoder": "clip", "unet": {"block_out_channels": [8, 16]}, "steps": 3},
    "train-t5": {"steps": 3},
}


@pytest.mark.parametrize("command", sorted(MINIMAL_CONFIGS))
@pytest.mark.parametrize("output_dir", ["", "  "])
def test_an_empty_output_dir_is_refused_in_one_line_and_nothing_is_written(
    command, output_dir, tmp_path, monkeypatch, capsys
) -> None:
    # probe12_clip #5: `output_dir: ""` is `Path("")`, the current folder: the run wrote among the user's files
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**MINIMAL_CONFIGS[command], "output_dir": output_dir}))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main([command, "--config", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert "output_dir is empty; name the run's folder in output_dir (--output-dir)" in errors[0]
    assert list(work.iterdir()) == []


# ------------------------------------------------------------------ frozen inputs


def _model_folder(folder: Path, weights: bytes) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"width": 4}')
    (folder / "model.safetensors").write_bytes(weights)
    (folder / ".cache").mkdir()  # a hub download's bookkeeping: not part of the model
    (folder / ".cache" / "lock").write_text("1")
    return folder


def _same_size_other_bytes(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(bytes([data[0] ^ 1]) + data[1:])


def test_a_resume_refuses_a_frozen_model_replaced_at_the_same_path(tmp_path, monkeypatch) -> None:
    from clipcond.training import frozen_inputs
    from clipcond.training.diffusion.config import TrainDiffusionConfig
    from clipcond.training.run_folder import FROZEN_INPUTS_FILE, RunFolderError, prepare_output_dir

    parts = {key: _model_folder(tmp_path / key, key.encode() * 100) for key in ("text_encoder", "vae", "init_from")}
    config = TrainDiffusionConfig(**{key: str(path) for key, path in parts.items()}, output_dir=str(tmp_path / "run"))
    prepare_output_dir(config, resume=False)
    recorded = json.loads((tmp_path / "run" / FROZEN_INPUTS_FILE).read_text())
    assert sorted(recorded) == ["init_from", "text_encoder", "vae"]
    assert sorted(recorded["vae"]["files"]) == ["config.json", "model.safetensors"]

    # nothing replaced: the resume reads no file again
    digests = []
    monkeypatch.setattr(frozen_inputs, "_file_digest", lambda path: digests.append(path) or "read")
    prepare_output_dir(config, resume=True)
    assert digests == []
    monkeypatch.undo()

    weights = parts["vae"] / "model.safetensors"
    original = weights.read_bytes()
    _same_size_other_bytes(weights)
    message = rf"cannot resume {tmp_path / 'run'}: vae {parts['vae']} was replaced since the run started \(model\.safetensors differs\)"
    with pytest.raises(RunFolderError, match=message):
        prepare_output_dir(config, resume=True)
    # the same bytes put back (a new file: another time and inode) resume
    weights.unlink()
    weights.write_bytes(original)
    prepare_output_dir(config, resume=True)
    (parts["init_from"] / "scheduler.json").write_text("{}")
    with pytest.raises(
        RunFolderError, match=r"init_from \S+ was replaced since the run started \(scheduler\.json was added\)"
    ):
        prepare_output_dir(config, resume=True)
    (parts["init_from"] / "scheduler.json").unlink()
    (parts["text_encoder"] / "config.json").unlink()
    with pytest.raises(
        RunFolderError, match=r"text_encoder \S+ was replaced since the run started \(config\.json is gone\)"
    ):
        prepare_output_dir(config, resume=True)
    (parts["text_encoder"] / "config.json").write_text('{"width": 4}')
    (parts["text_encoder"] / ".cache" / "lock").write_text("2")  # hidden files are not the model
    prepare_output_dir(config, resume=True)

    (tmp_path / "run" / FROZEN_INPUTS_FILE).write_text("{cut")
    with pytest.raises(RunFolderError, match=rf"its {FROZEN_INPUTS_FILE} is damaged.*delete .* and resume again"):
        prepare_output_dir(config, resume=True)
    # a run from before the record: resumed unchecked, and recorded from now on
    (tmp_path / "run" / FROZEN_INPUTS_FILE).unlink()
    _same_size_other_bytes(weights)
    prepare_output_dir(config, resume=True)
    assert json.loads((tmp_path / "run" / FROZEN_INPUTS_FILE).read_text()).keys() == recorded.keys()


def test_resuming_after_the_text_encoder_was_replaced_is_one_error_line_and_after_it_is_back_bit_for_bit(
    tiny_clip_text_path, tmp_path, capsys
) -> None:
    # probe12_train #6: the resumed run went on against the other tower, silently (1.5e-3 from the uninterrupted run)
    from safetensors.torch import load_file
    from test_train_diffusion import UNET
    from tiny_pipelines import clip_text_model

    from clipcond.training.diffusion.config import TrainDiffusionConfig
    from clipcond.training.diffusion.loop import train_diffusion

    tower = tmp_path / "tower"
    shutil.copytree(tiny_clip_text_path, tower)
    config = TrainDiffusionConfig(
        text_encoder=str(tower),
        unet=UNET,
        image_size=16,
        batch_size=2,
        steps=2,
        warmup_steps=1,
        checkpoint_every=1,
        keep_checkpoints=3,
        output_dir=str(tmp_path / "run"),
    )
    weights = tmp_path / "run" / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"
    train_diffusion(config, show_progress=False)
    uninterrupted = load_file(weights)
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step-000000002")
    shutil.rmtree(tmp_path / "run" / "pipeline")
    clip_text_model(12).save_pretrained(tower)  # another tower of the same shape, at the same path
    yaml_path = tmp_path / "run.yaml"
    yaml_path.write_text(yaml.safe_dump(dataclasses.asdict(config)))
    capsys.readouterr()
    assert main(["train-diffusion", "--config", str(yaml_path), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(
        f"error: cannot resume {tmp_path / 'run'}: text_encoder {tower} was replaced since the run started "
        "(model.safetensors differs)"
    )
    assert not (tmp_path / "run" / "pipeline").exists()
    shutil.rmtree(tower)
    shutil.copytree(tiny_clip_text_path, tower)  # the same tower back, as a new copy
    train_diffusion(config, resume=True, show_progress=False)
    resumed = load_file(weights)
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[name], uninterrupted[name]) for name in resumed)
