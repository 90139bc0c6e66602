"""A text-encoder LoRA run at a call's scale, as diffusers' `encode_prompt(lora_scale=...)` runs it.

diffusers' SD, SDXL, SD3 and Flux pipelines take a LoRA scale per call
(`cross_attention_kwargs={"scale": s}`, `joint_attention_kwargs={"scale": s}`) and their
`encode_prompt` multiplies the LoRA layers of some text encoders by it for the encode, then
divides it back out (`diffusers.utils.scale_lora_layers` / `unscale_lora_layers`). Which
encoders is the family's (`Family.lora_scaled_kinds`): the CLIPs of SD, SDXL and SD3, the CLIP
and the T5 of Flux, none for PixArt. The scale is a setting of peft's layers, so the weights
fingerprint sees it and cached embeddings of another scale are never served.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterator, Sequence
from typing import Any

from torch import nn

from clipcond.scalars import as_float


def check_lora_scale(lora_scale: Any, optional: bool = True) -> float | None:
    """`lora_scale` as a float (None stays None where `optional`): a TypeError unless it is a
    real number (numpy's and 0-d tensors included, as diffusers takes them), a ValueError
    unless it is finite."""
    if lora_scale is None and optional:
        return None
    lora_scale = as_float(lora_scale)
    if isinstance(lora_scale, bool) or not isinstance(lora_scale, numbers.Real):
        raise TypeError(f"`lora_scale` must be a number (the LoRA's weight, 1.0 as trained), got {lora_scale!r}")
    if not math.isfinite(lora_scale):
        raise ValueError(f"`lora_scale` must be finite, got {lora_scale!r}")
    return float(lora_scale)


@contextlib.contextmanager
def lora_scaled(models: Sequence[nn.Module], lora_scale: float | None) -> Iterator[None]:
    """Inside the block the peft LoRA layers of `models` run at `lora_scale` times their own
    scale, as in diffusers' `encode_prompt`; after it (also after an error) they are as before,
    with diffusers' own rule for a scale of 0 (each active adapter's scale set back to 1.0).
    None, or no model, leaves everything as it is and imports nothing."""
    if lora_scale is None or not models:
        yield
        return
    from diffusers.utils import scale_lora_layers, unscale_lora_layers

    for model in models:
        scale_lora_layers(model, lora_scale)
    try:
        yield
    finally:
        for model in models:
            unscale_lora_layers(model, lora_scale)
