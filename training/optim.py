"""The optimiser every training loop uses: AdamW with no weight decay on gains, biases and
the temperature (as CLIP trains), and a linear warm-up followed by a cosine decay; and the
check of its settings that every run config makes before any work
(`check_optimizer_settings`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_optimizer_settings(
    lr: Any,
    weight_decay: Any,
    warmup_steps: Any,
    betas: Sequence[Any] | None = None,
    eps: Any = None,
    max_grad_norm: Any = None,
) -> None:
    """Refuse AdamW settings that cannot train, before any work.

    A NaN or infinite `lr`, `weight_decay`, `eps` or gradient-norm limit is accepted by torch and
    turns every weight into NaN at the first update; a negative limit reverses the gradients and
    0 zeroes them; a negative warm-up fails inside the schedule.

    Args:
        lr: a finite number > 0.
        weight_decay: a finite number >= 0.
        warmup_steps: an integer >= 0.
        betas: two numbers in [0, 1), or None when the config has none (torch's defaults).
        eps: a finite number > 0 (0 divides by zero where a gradient is 0), or None when the
            config has none.
        max_grad_norm: the gradient-clipping limit, a finite number > 0, or None when the
            config has none.

    Raises:
        ValueError: naming the first wrong key, what it must be and what was given.
    """
    if not (_is_number(lr) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"`lr` must be a finite number > 0, got {lr!r}")
    if not (_is_number(weight_decay) and math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"`weight_decay` must be a finite number >= 0, got {weight_decay!r}")
    if not (_is_count(warmup_steps) and warmup_steps >= 0):
        raise ValueError(f"`warmup_steps` must be an integer >= 0, got {warmup_steps!r}")
    if betas is not None and not (len(betas) == 2 and all(_is_number(beta) and 0.0 <= beta < 1.0 for beta in betas)):
        raise ValueError(f"`betas` must be two numbers in [0, 1), got {list(betas)!r}")
    if eps is not None and not (_is_number(eps) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"`eps` must be a finite number > 0, got {eps!r}")
    if max_grad_norm is not None and not (
        _is_number(max_grad_norm) and math.isfinite(max_grad_norm) and max_grad_norm > 0
    ):
        raise ValueError(
            f"`max_grad_norm` must be a finite number > 0 (gradients are scaled down to this norm), "
            f"got {max_grad_norm!r}"
        )


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
