"""The trainable module of a contrastive run: a `ClipTwoTower` set up for the run's mode.

Modes:
- ``pretrain``: built from the model YAML, random init, everything trained;
- ``finetune``: loaded from `init_from`, everything trained;
- ``text_only``: loaded, image tower frozen;
- ``lit``: image tower loaded and locked, text tower and temperature from scratch (LiT);
- ``lora``: loaded, both towers frozen, LoRA adapters (peft) on the attention projections
  trained, and merged back into plain weights when the run saves its model.

The temperature (`logit_scale`) is trained in every mode; SigLIP adds a learned bias. A SigLIP
run in mode finetune, text_only or lora starts from the scale and the bias saved in `init_from`
(`load_logit_bias`); when the folder has no bias (a CLIP-loss model, or one saved before the bias
was kept) the bias starts at SigLIP's -10, with a warning. Pretrain and lit start both from
SigLIP's initial values.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import nn

from clipcond.losses import SIGLIP_INIT_LOGIT_BIAS, SIGLIP_INIT_LOGIT_SCALE
from clipcond.models import ClipTwoTower, build_text_tower, load_clip, load_logit_bias, load_model_config
from clipcond.training.clip.config import TrainClipConfig
from clipcond.training.loop import RunSetupError, reading_part

logger = logging.getLogger(__name__)


class ContrastiveModel(nn.Module):
    """A `ClipTwoTower` plus what the loss learns besides it (SigLIP's bias).

    `forward` returns L2-normalised features: images (batch, embed_dim) and texts
    (batch, embed_dim), or (batch, 2, embed_dim) with the hard-negative caption of each sample
    in `[:, 1]`.
    """

    def __init__(self, clip: ClipTwoTower, siglip: bool = False) -> None:
        super().__init__()
        self.clip = clip
        self.logit_bias = nn.Parameter(torch.tensor(SIGLIP_INIT_LOGIT_BIAS)) if siglip else None

    @property
    def logit_scale(self) -> nn.Parameter:
        """Log of the inverse temperature (scalar parameter)."""
        return self.clip.logit_scale

    def train(self, mode: bool = True) -> ContrastiveModel:
        """Train mode, except for frozen parts: a tower with nothing to train (locked in LiT /
        text-only runs) and any batch-norm layer whose weights are frozen (LoRA runs) stay in eval
        mode, so their statistics and dropout do not move."""
        super().train(mode)
        if mode:
            for tower in (self.clip.text, self.clip.vision):
                if not any(parameter.requires_grad for parameter in tower.parameters()):
                    tower.eval()
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                    parameter.requires_grad for parameter in module.parameters()
                ):
                    module.eval()
        return self

    def _text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.clip.encode_text(input_ids), dim=-1)

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        negative_input_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.nn.functional.normalize(self.clip.encode_image(pixel_values), dim=-1)
        texts = self._text(input_ids)
        if negative_input_ids is not None:
            texts = torch.stack([texts, self._text(negative_input_ids)], dim=1)
        return images, texts


def resolve_path(path: str, config_dir: Path | None) -> Path:
    """A path as given if it exists, else relative to the run config's folder."""
    candidate = Path(path)
    if candidate.exists() or config_dir is None or candidate.is_absolute():
        return candidate
    return config_dir / candidate


def build_contrastive_model(config: TrainClipConfig, config_dir: Path | None = None) -> ContrastiveModel:
    """The module to train, with `requires_grad` set by `config.mode` (see the module docstring).

    Raises:
        FileNotFoundError: the model YAML or `init_from` folder does not exist.
        RunSetupError: a LoRA run whose target modules exist in neither tower, or name a module
            peft cannot wrap (a LayerNorm, a whole MLP or embeddings block); the model YAML
            does not validate, or the `init_from` folder cannot be read (a file missing, weights
            truncated or empty, a config that does not parse), its key and file or folder named.
    """
    if config.mode == "pretrain":
        model_path = resolve_path(config.model, config_dir)
        if not model_path.is_file():
            raise FileNotFoundError(f"model config not found: {config.model}")
        with reading_part("model"):  # the YAML's errors name the file
            model_config = load_model_config(model_path)
        clip = ClipTwoTower(model_config)
    else:
        init_from = resolve_path(config.init_from, config_dir)
        if not init_from.is_dir():
            raise FileNotFoundError(f"`init_from` folder not found: {config.init_from}")
        with reading_part("init_from", init_from):
            clip = load_clip(init_from)
        clip = clip.to(torch.float32).train()
    siglip = config.loss == "siglip"
    if siglip and config.mode in ("pretrain", "lit"):
        with torch.no_grad():
            clip.logit_scale.fill_(SIGLIP_INIT_LOGIT_SCALE)
    if config.mode == "lit":
        clip.text = build_text_tower(clip.config)
        if not siglip:
            with torch.no_grad():
                clip.logit_scale.fill_(clip.config.logit_scale_init)
        clip.vision.requires_grad_(False)
    elif config.mode == "text_only":
        clip.vision.requires_grad_(False)
    elif config.mode == "lora":
        _add_lora(clip, config)
    model = ContrastiveModel(clip, siglip=siglip)
    if siglip and config.mode in ("finetune", "text_only", "lora"):
        _start_from_saved_bias(model, init_from)
    if config.gradient_checkpointing:
        clip.enable_gradient_checkpointing()
    return model


def _start_from_saved_bias(model: ContrastiveModel, init_from: Path) -> None:
    """Set SigLIP's bias to the one saved in `init_from`; warn and keep the initial one when there is none."""
    with reading_part("init_from", init_from):
        bias = load_logit_bias(init_from)
    if bias is None:
        logger.warning(
            "%s has no logit_bias.safetensors (a CLIP-loss model, or saved before SigLIP's bias was kept): "
            "the SigLIP bias starts at %s beside the saved logit_scale",
            init_from,
            SIGLIP_INIT_LOGIT_BIAS,
        )
        return
    with torch.no_grad():
        model.logit_bias.copy_(bias.to(model.logit_bias.dtype))


def _add_lora(clip: ClipTwoTower, config: TrainClipConfig) -> None:
    from peft import LoraConfig, get_peft_model

    clip.requires_grad_(False)
    wanted = set(config.lora.target_modules)
    applied = []
    for name in ("text", "vision"):
        tower = getattr(clip, name)
        present = {module_name.rsplit(".", 1)[-1] for module_name, _ in tower.named_modules()}
        targets = sorted(wanted & present)
        if not targets:
            continue
        lora = LoraConfig(
            r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout, target_modules=targets
        )
        try:
            setattr(clip, name, get_peft_model(tower, lora))
        except ValueError as error:  # peft refuses a module it has no adapter for (LayerNorm, a whole block)
            raise RunSetupError(_unwrappable_targets(tower, name, targets)) from error
        applied.append(name)
    if not applied:
        raise RunSetupError(
            f"`lora.target_modules` {sorted(wanted)} match no module of either tower (their attention "
            "projections are q_proj, k_proj, v_proj, out_proj)"
        )
    clip.logit_scale.requires_grad_(True)


def _unwrappable_targets(tower: nn.Module, name: str, targets: list[str]) -> str:
    """The message for `targets` that peft refused to wrap in the `name` tower, with what each matched."""
    matched = sorted(
        {
            f"{part} ({type(module).__name__})"
            for module_name, module in tower.named_modules()
            if (part := module_name.rsplit(".", 1)[-1]) in targets
        }
    )
    return (
        f"`lora.target_modules` match {', '.join(matched)} in the {name} tower, and peft cannot put a LoRA "
        "adapter on every one: it wraps linear, embedding and convolution layers (and torch's "
        "MultiheadAttention), such as the attention projections q_proj, k_proj, v_proj, out_proj"
    )


def export_clip(model: ContrastiveModel) -> ClipTwoTower:
    """The plain `ClipTwoTower` to save: LoRA adapters merged into the weights (on a copy)."""
    import copy

    clip = model.clip
    if not any(_is_peft(getattr(clip, name)) for name in ("text", "vision")):
        return clip
    clip = copy.deepcopy(clip)
    for name in ("text", "vision"):
        tower = getattr(clip, name)
        if _is_peft(tower):
            setattr(clip, name, tower.merge_and_unload())
    return clip


def _is_peft(module: nn.Module) -> bool:
    return hasattr(module, "merge_and_unload")


def clamp_logit_scale_(model: ContrastiveModel) -> None:
    """Keep the temperature in range after an optimizer step, as the CLIP paper does (scale <= 100)."""
    with torch.no_grad():
        model.logit_scale.clamp_(0.0, math.log(100.0))
