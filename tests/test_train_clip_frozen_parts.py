"""What a contrastive run keeps frozen stays frozen: the locked ResNet tower of clip-tiny (its
BatchNorm statistics included) through evaluations in the middle of the run, and a resume of
such a run; and the config keys that only one mode reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from test_train_clip import last_checkpoint_straight_and_resumed

from clipcond.models import load_clip
from clipcond.training.clip.config import TrainClipConfig
from clipcond.training.clip.loop import train_clip

REPO = Path(__file__).resolve().parents[1]
TINY_RESNET_MODEL = str(REPO / "configs" / "models" / "clip-tiny.yaml")  # BatchNorm in the image tower
COMMON = dict(batch_size=8, lr=1e-2, warmup_steps=1, log_every=1, eval_images_per_class=1)
LORA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A clip-tiny (ResNet image tower) trained for 2 steps, so its BatchNorm statistics are not the initial ones."""
    output = tmp_path_factory.mktemp("pretrained")
    config = TrainClipConfig(model=TINY_RESNET_MODEL, steps=2, checkpoint_every=100, output_dir=str(output), **COMMON)
    return train_clip(config, show_progress=False).model_dir


def _image_tower(folder: Path) -> dict[str, torch.Tensor]:
    """The image tower's state dict, buffers (running_mean, running_var, num_batches_tracked) included."""
    return {key: value.clone() for key, value in load_clip(folder).vision.state_dict().items()}


@pytest.mark.parametrize("mode", ["lit", "text_only", "lora"])
def test_evaluations_during_the_run_leave_the_locked_image_tower_as_it_was(
    tmp_path: Path, pretrained: Path, mode: str
) -> None:
    """eval_every 1 of 3 steps: after each evaluation the frozen tower (lit, text_only) or the
    frozen BatchNorm layers (lora) must be back in eval mode, so no statistic moves."""
    config = TrainClipConfig(
        init_from=str(pretrained),
        mode=mode,
        steps=3,
        eval_every=1,
        checkpoint_every=100,
        output_dir=str(tmp_path),
        **COMMON,
    )
    before = _image_tower(pretrained)
    after = _image_tower(train_clip(config, show_progress=False).model_dir)
    assert before.keys() == after.keys()
    changed = sorted(key for key in before if not torch.equal(before[key], after[key]))
    batch_norm = [key for key in before if "running_" in key or "num_batches_tracked" in key]
    assert batch_norm  # the test needs a BatchNorm tower
    if mode == "lora":  # only the merged adapters' projections move
        assert changed and all(any(part in key for part in LORA_PROJECTIONS) for key in changed), changed
    else:
        assert changed == []


def test_a_resume_of_a_lit_run_with_evaluations_redoes_the_steps_bit_for_bit(tmp_path: Path, pretrained: Path) -> None:
    config = TrainClipConfig(
        init_from=str(pretrained),
        mode="lit",
        steps=4,
        eval_every=1,
        checkpoint_every=2,
        output_dir=str(tmp_path),
        **COMMON,
    )
    straight, resumed = last_checkpoint_straight_and_resumed(config, step=4)
    assert straight.keys() == resumed.keys()
    different = [key for key in straight if not torch.equal(straight[key], resumed[key])]
    assert different == []


def _write_run_config(path: Path, settings: dict) -> Path:
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.mark.parametrize("targets", [["layer_norm1"], ["final_layer_norm"], ["mlp"], ["embeddings"], ["q_proj", "mlp"]])
def test_lora_targets_peft_cannot_wrap_are_one_error_line_before_any_work(
    tmp_path: Path, pretrained: Path, targets: list[str], capsys
) -> None:
    from clipcond.cli import main

    output = tmp_path / "run"
    settings = dict(init_from=str(pretrained), mode="lora", steps=2, checkpoint_every=100, output_dir=str(output))
    path = _write_run_config(tmp_path / "run.yaml", {**settings, **COMMON, "lora": {"target_modules": targets}})
    assert main(["train-clip", "--config", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]  # (import warnings aside)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "lora.target_modules" in lines[0] and targets[-1] in lines[0]
    assert not output.exists() or not any(output.iterdir())


@pytest.mark.parametrize("mode", ["pretrain", "finetune", "text_only", "lit"])
def test_a_lora_section_outside_mode_lora_is_refused_naming_the_key(tmp_path: Path, mode: str) -> None:
    """Like `init_from` in pretrain: a section the mode would never read is an error, not ignored."""
    start = {"model": TINY_RESNET_MODEL} if mode == "pretrain" else {"init_from": str(tmp_path)}
    path = _write_run_config(tmp_path / "run.yaml", {**start, "mode": mode, "lora": {"r": 4, "dropout": 0.1}})
    with pytest.raises(ValueError, match=r"`lora` is only read in mode 'lora'"):
        TrainClipConfig.from_yaml(path)
    path = _write_run_config(tmp_path / "run.yaml", {**start, "mode": mode})
    assert TrainClipConfig.from_yaml(path).mode == mode  # the default section is no mistake


def test_the_command_refuses_a_lora_override_outside_mode_lora(tmp_path: Path, capsys) -> None:
    from clipcond.cli import main

    output = tmp_path / "run"
    path = _write_run_config(tmp_path / "run.yaml", {"model": TINY_RESNET_MODEL, "output_dir": str(output)})
    assert main(["train-clip", "--config", str(path), "--set", "lora.r=4", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("error:")] and "`lora`" in err, err
    assert not output.exists()
