"""The optimiser every training loop uses: AdamW with no weight decay on gains, biases and
the temperature (as CLIP trains), and a linear warm-up followed by a cosine decay."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def is_decay_free(name: str, parameter: torch.Tensor) -> bool:
    """Norm gains, biases, scalars (the logit scale) and other 1-D parameters get no weight decay."""
    return parameter.ndim < 2 or "logit_scale" in name or "logit_bias" in name or name.endswith(".bias")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups over the trainable parameters: with and without weight decay."""
    decay, free = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (free if is_decay_free(name, parameter) else decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": free, "weight_decay": 0.0},
    ]


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning-rate factor: linear from 1/warmup up to 1 over `warmup_steps`, then a cosine
    down to `min_lr_ratio` at `total_steps` (and held there)."""
    if warmup_steps < 0 or total_steps < 1:
        raise ValueError(f"need warmup_steps >= 0 and total_steps >= 1, got {warmup_steps}, {total_steps}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def adamw_with_warmup_cosine(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    warmup_steps: int,
    total_steps: int,
    betas: Sequence[float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over `param_groups(model, weight_decay)` and its `warmup_cosine` schedule.

    The fused kernel updates every parameter in one pass: the same update, less memory traffic.
    `betas` and `eps` default to torch's.
    """
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=tuple(betas), eps=eps, fused=True)
    return optimizer, warmup_cosine(optimizer, warmup_steps, total_steps)
