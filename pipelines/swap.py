"""`swap_text_encoder`: put another CLIP text encoder into an existing SD-family pipeline."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import DiffusionPipeline


def swap_text_encoder(
    pipe: DiffusionPipeline, text_encoder: torch.nn.Module, tokenizer: Any = None
) -> DiffusionPipeline:
    """Put `text_encoder` (and `tokenizer`, when given) into an existing SD-family pipeline, in place.

    Typical use: a CLIP text tower fine-tuned by `clipcond train-clip`
    (`transformers.CLIPTextModel.from_pretrained(run / "model" / "text_encoder")`) into a
    `StableDiffusionPipeline`. The encoder's width must equal the UNet's `cross_attention_dim`.

    Raises:
        TypeError: the pipeline has no `text_encoder` component.
        ValueError: the widths differ (names the adapter option to use instead).
    """
    if "text_encoder" not in pipe.components:
        raise TypeError(f"{type(pipe).__name__} has no `text_encoder` component to swap")
    width = getattr(text_encoder.config, "hidden_size", None)
    expected = pipe.unet.config.cross_attention_dim
    if width != expected:
        raise ValueError(
            f"text_encoder is {width} wide but unet.config.cross_attention_dim is {expected}; use an encoder of "
            f"that width, or a learned adapter: CLIPConditionedPipeline.from_pipe(pipe, text_encoder=..., "
            f"text_projection=TextProjection(projection_dim={expected}, clip_width={width}), recipe='custom'), "
            "trained with `clipcond train-diffusion` (`train: adapter`)"
        )
    modules = {"text_encoder": text_encoder.to(pipe.unet.device)}
    if tokenizer is not None:
        modules["tokenizer"] = tokenizer
    pipe.register_modules(**modules)
    return pipe
