"""What the lab's tests share: a tiny pipeline, a tiny CLIP for clip_score and an experiment YAML written out."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parent.parent


def save_tiny_clip(folder: Path) -> Path:
    """The clip-tiny model (seed 0) saved in `folder`/clip, for the clip_score metric."""
    from clipcond.models import ClipTwoTower, load_model_config, save_clip

    torch.manual_seed(0)
    return save_clip(ClipTwoTower(load_model_config(REPO / "configs/models/clip-tiny.yaml")), folder / "clip")


def save_tiny_pipeline(folder: Path, seed: int) -> Path:
    """A tiny pixel-space CLIPConditionedPipeline (16x16, seed `seed`) saved in `folder`."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from tiny_pipelines import WIDTH, clip_text_model

    from clipcond import clip_tokenizer
    from clipcond.pipelines.clip_conditioned import CLIPConditionedPipeline

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=16,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=WIDTH,
        norm_num_groups=4,
    )
    pipe = CLIPConditionedPipeline(
        unet=unet, scheduler=DDPMScheduler(), text_encoder=clip_text_model(1), tokenizer=clip_tokenizer()
    )
    pipe.save_pretrained(folder)
    return folder


def write_experiment(folder: Path, config: dict, **overrides) -> Path:
    """`config` updated with `overrides`, written to `folder`/experiment.yaml; its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "experiment.yaml"
    path.write_text(yaml.safe_dump({**config, **overrides}, sort_keys=False))
    return path
