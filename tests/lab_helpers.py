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
    from diffusers import DDPMScheduler
    from tiny_pipelines import clip_text_model, pixel_space_unet

    from clipcond import clip_tokenizer
    from clipcond.pipelines.clip_conditioned import CLIPConditionedPipeline

    unet = pixel_space_unet(seed)
    pipe = CLIPConditionedPipeline(
        unet=unet, scheduler=DDPMScheduler(), text_encoder=clip_text_model(1), tokenizer=clip_tokenizer()
    )
    pipe.save_pretrained(folder)
    return folder


def record_pipeline_calls(monkeypatch) -> list[int]:
    """A list that gets the number of images of every `CLIPConditionedPipeline` call from now on."""
    from clipcond.pipelines.clip_conditioned import CLIPConditionedPipeline

    recorded: list[int] = []
    original = CLIPConditionedPipeline.__call__

    def counting(self, *args, **kwargs):
        recorded.append(len(kwargs["prompt"]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CLIPConditionedPipeline, "__call__", counting)
    return recorded


def write_experiment(folder: Path, config: dict, **overrides) -> Path:
    """`config` updated with `overrides`, written to `folder`/experiment.yaml; its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "experiment.yaml"
    path.write_text(yaml.safe_dump({**config, **overrides}, sort_keys=False))
    return path
