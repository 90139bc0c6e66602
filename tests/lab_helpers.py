"""What the lab's tests share: a tiny CLIP for clip_score and an experiment YAML written out."""

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


def write_experiment(folder: Path, config: dict, **overrides) -> Path:
    """`config` updated with `overrides`, written to `folder`/experiment.yaml; its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "experiment.yaml"
    path.write_text(yaml.safe_dump({**config, **overrides}, sort_keys=False))
    return path
