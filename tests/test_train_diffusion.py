"""The diffusion loop on a tiny pixel-space UNet, the shapes stream and a frozen tiny CLIP."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from clipcond import CLIPConditionedPipeline
from killing import kill_after_checkpoint
from clipcond.training.run_folder import TrainingDiverged
from clipcond.training.diffusion_config import TrainDiffusionConfig
from clipcond.training.diffusion_loop import train_diffusion

UNET = dict(
    block_out_channels=[16, 32], layers_per_block=1, norm_num_groups=8, attention_head_dim=8,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"], up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
)  # fmt: skip


def tiny_config(text_encoder: Path, output_dir: Path, **overrides) -> TrainDiffusionConfig:
    settings = dict(text_encoder=str(text_encoder), unet=UNET, image_size=16, batch_size=4, steps=3, lr=1e-3,
                    warmup_steps=1, checkpoint_every=2, log_every=1, output_dir=str(output_dir), ema_decay=0.9)  # fmt: skip
    settings.update(overrides)
    return TrainDiffusionConfig(**settings)


def unet_weights(pipeline_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors"))


@pytest.fixture(scope="module")
def trained(tiny_clip_text_path, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("diffusion")
    return train_diffusion(tiny_config(tiny_clip_text_path, output, sample_every=3, sample_steps=2), show_progress=False).pipeline_dir


def test_run_writes_a_pipeline_that_generates(trained: Path) -> None:
    pipe = CLIPConditionedPipeline.from_pretrained(trained)
    images = pipe("a red circle", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 16, 16, 3) and np.isfinite(images).all()
    run = trained.parent
    assert (run / "samples" / "step-0000003.png").is_file()
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and np.isfinite(losses).all()
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-000000002", "step-000000003"]


def test_final_unet_holds_the_ema_weights(tiny_clip_text_path, tmp_path: Path) -> None:
    with_ema = train_diffusion(tiny_config(tiny_clip_text_path, tmp_path / "ema", ema_decay=0.5), show_progress=False)
    without = train_diffusion(tiny_config(tiny_clip_text_path, tmp_path / "raw", ema_decay=None), show_progress=False)
    ema, raw = unet_weights(with_ema.pipeline_dir), unet_weights(without.pipeline_dir)
    trained_raw = load_file(str(tmp_path / "ema" / "checkpoints" / "step-000000003" / "unet.safetensors"))
    assert all(torch.equal(raw[k], trained_raw[k]) for k in raw)  # same training, EMA off
    assert any(not torch.equal(ema[k], raw[k]) for k in raw)


def test_v_prediction_and_lora_on_cross_attention(trained: Path, tiny_clip_text_path, tmp_path: Path) -> None:
    v = train_diffusion(tiny_config(tiny_clip_text_path, tmp_path / "v", prediction_type="v_prediction", steps=2), show_progress=False)
    assert np.isfinite(v.loss)
    assert CLIPConditionedPipeline.from_pretrained(v.pipeline_dir).scheduler.config.prediction_type == "v_prediction"
    lora = train_diffusion(
        tiny_config(tiny_clip_text_path, tmp_path / "lora", unet=None, init_from=str(trained), train="lora", steps=2,
                    lr=1e-2, ema_decay=None),
        show_progress=False,
    )  # fmt: skip
    before, after = unet_weights(trained), unet_weights(lora.pipeline_dir)
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".attn2.to_" in k for k in changed)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_clip_text_path, tmp_path: Path, monkeypatch) -> None:
    import clipcond.training.diffusion_loop as loop

    calls = {"n": 0}
    real = loop.F.mse_loss

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs) * (float("nan") if calls["n"] == 3 else 1.0)

    monkeypatch.setattr(loop.F, "mse_loss", poisoned)
    with pytest.raises(TrainingDiverged, match="step 3.*step-000000002"):
        train_diffusion(tiny_config(tiny_clip_text_path, tmp_path, steps=5), show_progress=False)
    assert not (tmp_path / "pipeline").exists()


def test_bad_configs(tiny_clip_text_path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one of"):
        tiny_config(tiny_clip_text_path, tmp_path, init_from=str(tmp_path))
    with pytest.raises(ValueError, match="block_out_channel"):
        tiny_config(tiny_clip_text_path, tmp_path, unet={**UNET, "block_out_channel": [8]})
    with pytest.raises(ValueError, match="sample_size"):
        tiny_config(tiny_clip_text_path, tmp_path, unet={**UNET, "sample_size": 8})
    with pytest.raises(FileNotFoundError, match="text_encoder"):
        train_diffusion(tiny_config(tmp_path / "missing", tmp_path / "run"), show_progress=False)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"text_encoder": "x", "unet": UNET, "stpes": 3}))
    with pytest.raises(ValueError, match="stpes"):
        TrainDiffusionConfig.from_yaml(path)


def test_sigkill_and_resume_end_with_the_uninterrupted_weights(tiny_clip_text_path, tmp_path: Path) -> None:
    steps = 40
    reference = train_diffusion(tiny_config(tiny_clip_text_path, tmp_path / "reference", steps=steps, checkpoint_every=3,
                                            log_every=10), show_progress=False)  # fmt: skip
    config = tiny_config(tiny_clip_text_path, tmp_path / "killed", steps=steps, checkpoint_every=3, log_every=10)
    config_path = tmp_path / "killed.yaml"
    config_path.write_text(yaml.safe_dump(dataclasses.asdict(config)))
    command = [sys.executable, "-m", "clipcond.training.train_diffusion", "--config", str(config_path), "--no-progress"]
    killed_at = kill_after_checkpoint(command, tmp_path / "killed", at_least=9)
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = unet_weights(reference.pipeline_dir), unet_weights(tmp_path / "killed" / "pipeline")
    difference = max((expected[k] - got[k]).abs().max().item() for k in expected)
    assert difference <= 1e-6, f"killed at {killed_at}: max difference {difference}"
