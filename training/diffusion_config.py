"""`TrainDiffusionConfig`: a UNet (or LoRA adapter) trained against a frozen text conditioner,
described in YAML (validated: an unknown key is an error naming the key and the file)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from clipcond.config import load_config
from clipcond.training.clip_config import DataConfig


@dataclass
class DiffusionLoraSettings:
    """LoRA (peft) on the UNet's cross-attention projections."""

    r: int = 8
    alpha: int = 8
    target_modules: list[str] = field(default_factory=lambda: ["attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"])


@dataclass
class TrainDiffusionConfig:
    """A diffusion training run in pixel space.

    Attributes:
        text_encoder: folder of the frozen CLIP text tower: a `save_clip` folder (its
            `text_encoder/`), or a transformers text-encoder folder.
        unet: `UNet2DConditionModel` arguments for a UNet from scratch (`sample_size`,
            `in_channels`/`out_channels` (3), `cross_attention_dim` are set by the run); or None
            with `init_from`.
        init_from: a saved `CLIPConditionedPipeline` whose UNet is fine-tuned (or gets LoRA).
        train: "unet" (every UNet weight) or "lora" (adapters on cross-attention only).
        prediction_type: "epsilon" or "v_prediction" (DDPM noise schedule of `num_train_timesteps`).
        image_size: side of the training images in pixels.
        caption_dropout: fraction of captions replaced by "" (for classifier-free guidance).
        ema_decay: decay of the weight EMA saved as the final UNet; None turns EMA off.
        sample_every, sample_prompts, sample_steps: write a grid of samples during training.
    """

    text_encoder: str
    unet: dict[str, Any] | None = None
    init_from: str | None = None
    train: Literal["unet", "lora"] = "unet"
    lora: DiffusionLoraSettings = field(default_factory=DiffusionLoraSettings)
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    num_train_timesteps: int = 1000
    data: DataConfig = field(default_factory=DataConfig)
    image_size: int = 32
    batch_size: int = 64
    steps: int = 1000
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    max_grad_norm: float = 1.0
    caption_dropout: float = 0.1
    ema_decay: float | None = 0.999
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 10
    sample_every: int = 0
    sample_prompts: list[str] = field(default_factory=lambda: ["a red circle", "a blue square above a green triangle"])
    sample_steps: int = 20
    output_dir: str = "runs/diffusion"
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.unet is None) == (self.init_from is None):
            raise ValueError("give exactly one of `unet` (a UNet from scratch) and `init_from` (a saved pipeline)")
        if self.train == "lora" and self.init_from is None:
            raise ValueError("`train: lora` needs `init_from` (adapters go on a trained UNet)")
        if self.unet is not None:
            from diffusers import UNet2DConditionModel

            allowed = set(inspect.signature(UNet2DConditionModel.__init__).parameters) - {"self"}
            unknown = sorted(set(self.unet) - allowed)
            if unknown:
                raise ValueError(f"unet: unknown UNet2DConditionModel arguments {unknown}")
            fixed = sorted({"sample_size", "cross_attention_dim"} & set(self.unet))
            if fixed:
                raise ValueError(f"unet: {fixed} are set by the run (image_size, the text encoder's width); remove them")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ValueError(f"`caption_dropout` must be in [0, 1), got {self.caption_dropout}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"`ema_decay` must be in (0, 1) or null, got {self.ema_decay}")
        if self.image_size < 8 or self.batch_size < 1 or self.steps < 1 or self.checkpoint_every < 1:
            raise ValueError("`image_size` must be >= 8 and `batch_size`, `steps`, `checkpoint_every` >= 1")
        if self.sample_every < 0 or self.sample_steps < 1 or self.log_every < 1:
            raise ValueError("`sample_every` must be >= 0, `sample_steps` and `log_every` >= 1")

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainDiffusionConfig:
        """Load and validate a YAML run config."""
        return load_config(cls, path)
